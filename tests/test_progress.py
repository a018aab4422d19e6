"""pipeline/progress.py: a bar on a terminal; elsewhere a plain line at most every interval (counts, rate, ETA)."""
import io

from labelopt.pipeline.progress import Progress, progress_interval


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_plain_line_per_interval_with_counts_rate_and_eta():
    clock, log = Clock(), io.StringIO()
    with Progress(1000, "epoch 3/240", stream=log, interval=30, clock=clock) as bar:
        for _ in range(10):  # 100 images every 10 s
            clock.now += 10
            bar.update(100)
            if bar.done == 300:
                bar.set_postfix(loss="2.345", lr="0.05")  # shown from the next line on
    lines = log.getvalue().splitlines()
    assert lines == ["epoch 3/240: 300/1,000 img (30.0%), 10 img/s, ETA 0:01:10",
                     "epoch 3/240: 600/1,000 img (60.0%), 10 img/s, ETA 0:00:40, loss 2.345, lr 0.05",
                     "epoch 3/240: 900/1,000 img (90.0%), 10 img/s, ETA 0:00:10, loss 2.345, lr 0.05"]
    assert "\r" not in log.getvalue()


def test_no_line_for_work_shorter_than_the_interval_and_none_when_disabled():
    clock, log = Clock(), io.StringIO()
    with Progress(50, "evaluate", stream=log, interval=30, clock=clock) as bar:
        clock.now += 29
        bar.update(50)
    with Progress(50, "rank 1", stream=log, interval=1, clock=clock, enabled=False) as bar:
        clock.now += 60
        bar.update(50)
    assert log.getvalue() == ""


def test_a_terminal_gets_a_bar_that_goes_away():
    screen = Terminal()
    with Progress(10, "labelling", stream=screen, interval=0.001) as bar:
        bar.update(10)
    assert "labelling" in screen.getvalue() and "\r" in screen.getvalue()  # tqdm's, not plain lines
    assert "ETA" not in screen.getvalue()


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LABELOPT_PROGRESS_SECONDS", "5")
    assert progress_interval() == 5.0
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv("LABELOPT_PROGRESS_SECONDS", bad)
        assert progress_interval() == 30.0
