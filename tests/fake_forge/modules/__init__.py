"""Forge's `modules` is A1111's with sd_models and processing rewritten for its backend: take those two from here
and everything else from the A1111 fake."""
import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "fake_a1111", "modules"))
