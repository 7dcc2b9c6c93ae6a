"""Simulated stop signals at a chosen training step, for crash-safety tests."""
import os
import signal

from tailclip.model import TailCLIP


def ctrl_c_on_forward_call(monkeypatch, call_number: int, signal_number: int = signal.SIGINT):
    """Send SIGINT (or ``signal_number``) to this process when ``TailCLIP.forward`` is called
    for the ``call_number``-th time (the step still finishes: training stops at step
    boundaries). Returns the original ``forward``, to put back without undoing other patches."""
    forward, calls = TailCLIP.forward, []

    def forward_then_signal(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == call_number:
            os.kill(os.getpid(), signal_number)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TailCLIP, "forward", forward_then_signal)
    return forward
