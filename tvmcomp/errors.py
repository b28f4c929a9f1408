"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class TvmcompError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


class ModelError(TvmcompError):
    """The model file is missing, corrupt or uses something we cannot compile."""


class ArtifactError(TvmcompError):
    """An artifact directory is missing, incomplete or has been tampered with."""


class InputError(TvmcompError):
    """An input tensor has the wrong shape or dtype for the artifact."""


class VerificationError(TvmcompError):
    """The compiled model disagrees with its float reference."""


class AccuracyDropError(VerificationError):
    """The compiled model agrees with its reference (an int8 model's QDQ), but quantization
    cost more accuracy against the float model than allowed."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the CLI exits with 128 + the signal number (130 / 143)."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = int(signum)


def reject_unknown(d: dict, valid, what: str = "", error: type[Exception] = TvmcompError,
                   source: str = "") -> None:
    """Raise ``error`` naming the first key of ``d`` (a config read from JSON or TOML) that
    is not in ``valid``, with the valid ones: ``[source: ]unknown [what ]key 'k'; valid
    keys: ...``."""
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise error(f"{source + ': ' if source else ''}unknown {what + ' ' if what else ''}key "
                    f"{unknown[0]!r}; valid keys: {', '.join(sorted(valid))}")
