"""callbacks.RichProgressBar: Lightning's bar, redrawn a few times a second, ending on the same numbers."""

from __future__ import annotations

from unittest import mock

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.progress_bar import RichProgressBar


def test_draw_due_at_the_interval_and_the_last_batch():
    bar = RichProgressBar(max_redraws_per_second=10)
    clock = iter([100.0, 100.05, 100.11, 100.12, 100.13])
    with mock.patch("callbacks.progress_bar.time.monotonic", lambda: next(clock)):
        assert [bar.draw_due(i, 5) for i in range(5)] == [True, False, True, False, True]  # last batch always


def test_nonpositive_rate_is_refused():
    with pytest.raises(ValueError, match="max_redraws_per_second must be > 0, got 0"):
        RichProgressBar(max_redraws_per_second=0)


class _Completed(Callback):
    """The train bar's completed / total at every epoch end."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        bar = next(c for c in trainer.callbacks if isinstance(c, RichProgressBar))
        task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
        self.seen.append((task.completed, task.total))


def test_a_fit_draws_fewer_times_than_batches_and_ends_complete(tiny_trainer_kwargs):
    bar, completed = RichProgressBar(max_redraws_per_second=1e-3), _Completed()
    kwargs = {**tiny_trainer_kwargs, "enable_progress_bar": True, "limit_train_batches": 20, "max_epochs": 2}
    with mock.patch.object(LightningRichProgressBar, "on_train_batch_end", autospec=True,
                           side_effect=LightningRichProgressBar.on_train_batch_end) as drawn:
        Trainer(**kwargs, callbacks=[bar, completed]).fit(BoringModel())
    assert completed.seen == [(20, 20), (20, 20)]
    assert 2 <= drawn.call_count <= 4  # each last batch, the very first; Lightning's bar draws after all 40


def test_a_disabled_bar_fit_validate_test_predict(tiny_trainer_kwargs):
    """Lightning disables the bar on every rank but 0 (``ProgressBar.setup``); it then tracks no dataloader, so the
    throttle must not ask it for one (DDP rank 1 failed with ``_current_eval_dataloader_idx is not None``)."""
    bar = RichProgressBar()
    bar.disable()
    trainer = Trainer(**{**tiny_trainer_kwargs, "enable_progress_bar": True}, callbacks=[bar])
    model = BoringModel()
    trainer.fit(model)
    trainer.validate(model)
    trainer.test(model)
    assert len(trainer.predict(model)) > 0
    assert bar.is_disabled and bar.progress is None


def test_the_version_number_shows_as_an_integer(tiny_trainer_kwargs, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    bar = RichProgressBar()
    kwargs = {**tiny_trainer_kwargs, "enable_progress_bar": True, "logger": CSVLogger(tmp_path, name="run", version=3)}
    trainer = Trainer(**kwargs, callbacks=[bar])
    trainer.fit(BoringModel())
    items = bar.get_metrics(trainer, trainer.lightning_module)
    assert items["v_num"] == "3"  # Lightning's rich bar formats any number with .3f
