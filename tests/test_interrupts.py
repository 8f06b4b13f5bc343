"""A Ctrl-C whose KeyboardInterrupt a C extension dropped is raised again at the loops' next check
(client/interrupts.py; a capacity search once ran on to the end after SIGINT)."""

import os
import signal
import time

import pytest

from tdet.client import interrupts


def test_a_dropped_ctrl_c_is_raised_once_at_the_next_check():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.recorded():
        interrupts.check()  # nothing pending: no raise
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode, well inside this
            pytest.fail("SIGINT raised nothing")
        except KeyboardInterrupt:
            pass  # what gRPC's C core may do with it
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts.check()  # once only
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_takes_the_ctrl_c_path_only_where_asked():
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_delivered_ctrl_c_is_not_raised_again_in_a_later_block():
    with pytest.raises(KeyboardInterrupt):
        with interrupts.recorded():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    with interrupts.recorded():
        interrupts.check()  # the first block's Ctrl-C reached its caller: nothing pending here


def test_a_ctrl_c_lost_at_the_end_of_a_block_interrupts_on_leaving_it():
    with pytest.raises(KeyboardInterrupt):
        with interrupts.recorded():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                pass  # dropped, and no check() follows inside the block
    interrupts.check()  # raised once, on leaving
