"""The terminal progress display: redrawn in place on a terminal, plain lines elsewhere."""

import io

from rllib_app.training.progress import ProgressDisplay


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    display = ProgressDisplay(out)  # StringIO is not a tty
    display.iteration("iter 1")
    display.iteration("iter 2")
    display.event("eval @ iter 2")
    display.close()
    assert out.getvalue() == "iter 1\niter 2\neval @ iter 2\n"


def test_live_redraws_the_iteration_line_and_keeps_events():
    out = io.StringIO()
    display = ProgressDisplay(out, live=True)
    display.iteration("iter 1")
    display.iteration("iter 2")
    display.event("eval @ iter 2")
    display.iteration("iter 3")
    display.close()
    text = out.getvalue()
    # iteration 1 was overwritten in place; iteration 2 stays above its evaluation
    assert text == "\r\x1b[2Kiter 1\r\x1b[2Kiter 2\neval @ iter 2\n\r\x1b[2Kiter 3\n"
