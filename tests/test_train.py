import pytest
import torch
import torch.nn as nn

from koclip_lib.train import LoopConfig, latest_checkpoint, step_generator, train_loop


def _regression_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    w_true = torch.randn(8, 1, generator=torch.Generator().manual_seed(99))

    def loss_fn(batch):
        gen = step_generator(seed, batch.step)
        x = torch.randn(batch.size, 8, generator=gen)
        return nn.functional.mse_loss(batch.models[0](batch.take(x)), batch.take(x) @ w_true)

    return model, loss_fn


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    model, _ = _regression_problem()
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    before = nn.functional.mse_loss(model(x), y).item()
    train_loop([model], lambda batch: nn.functional.mse_loss(model(x), y), LoopConfig(steps=60, lr=1e-2, warmup_steps=0), tmp_path)
    assert nn.functional.mse_loss(model(x), y).item() < 0.5 * before


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    cfg = LoopConfig(steps=20, lr=1e-2, batch_size=32, checkpoint_every=5, warmup_steps=2, log_every=1)
    full, loss_full = _regression_problem()
    log_full = train_loop([full], loss_full, cfg, tmp_path / "full")

    part, loss_part = _regression_problem()
    interrupted = train_loop([part], loss_part, cfg, tmp_path / "part", stop_after=12)
    assert interrupted["steps"] == 12
    assert latest_checkpoint(tmp_path / "part").name == "step-10"
    # a new process would rebuild the model from scratch and resume from the checkpoint on disk
    fresh, loss_fresh = _regression_problem(seed=0)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # different starting weights: the checkpoint must overwrite them
    resumed = train_loop([fresh], loss_fresh, cfg, tmp_path / "part")
    assert resumed["steps"] == 20
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in log_full["history"]] == list(range(1, 21))
    for a, b in zip(full.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b)


def test_early_stopping_restores_the_best_weights(tmp_path):
    model, loss_fn = _regression_problem()
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7, 9.0, 9.0])
    snapshots = []

    def validate():
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return next(vals)

    cfg = LoopConfig(steps=100, lr=1e-2, validate_every=5, patience=3, warmup_steps=0)
    log = train_loop([model], loss_fn, cfg, tmp_path, validate=validate)
    assert log["stopped_early"] and log["steps"] == 25 and log["best_val"] == 2.0
    for p, best in zip(model.parameters(), snapshots[1]):
        torch.testing.assert_close(p, best)


def test_one_process_trains_a_loop_in_no_precision_then_one_in_bf16(tmp_path):
    """`run --build` and the notebooks train mini models ("no") and then students ("bf16" in full) in one process;
    accelerate's process-wide state refuses a second precision unless the loop resets it."""
    for i, precision in enumerate(("no", "bf16", "no")):
        model, loss_fn = _regression_problem(seed=i)
        log = train_loop([model], loss_fn, LoopConfig(steps=3, warmup_steps=0, mixed_precision=precision), tmp_path / precision)
        assert log["steps"] == 3 and log["config"]["mixed_precision"] == precision
    from accelerate.state import AcceleratorState

    assert AcceleratorState().mixed_precision == "no"


def test_lr_scales_freeze_and_slow_down_parameters_by_name(tmp_path):
    """{"0": 0} freezes the first layer, {"2": 0.1} trains the last at a tenth of the rate; without scales, one group."""
    from koclip_lib.train import _param_groups

    model, loss_fn = _regression_problem()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = LoopConfig(steps=5, lr=1e-2, batch_size=32, warmup_steps=0, lr_schedule="constant", lr_scales={"0": 0, "2": 0.1})
    trained, groups = _param_groups([model], list(model.parameters()), cfg)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-2 * 0.1)] and len(trained) == 2
    train_loop([model], loss_fn, cfg, tmp_path)
    first, last = model[0], model[2]
    assert torch.equal(first.weight, before[0]) and not first.weight.requires_grad
    assert not torch.equal(last.weight, before[2])
    plain, _ = _regression_problem()
    params = list(plain.parameters())
    assert _param_groups([plain], params, LoopConfig()) == (params, params)
    with pytest.raises(ValueError, match="freezes every parameter"):
        _param_groups([plain], params, LoopConfig(lr_scales={"0": 0, "2": 0}))
