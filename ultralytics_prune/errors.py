"""The one exception type for a user's mistake: the CLI prints it as one line; every other exception is a bug."""


class UserError(ValueError):
    """A mistake in what the user asked for (a key, a value, a path, a checkpoint) that the user can fix.

    The message is one line that names the problem and the fix. The `yolo` command prints it and exits with status 2;
    the Python API raises it. It subclasses ValueError so that code catching ValueError keeps working.
    """


class ExportMismatch(RuntimeError):
    """The exported ONNX model does not compute what the PyTorch model computes.

    The run's PyTorch checkpoint is saved; the `yolo` command prints the numbers as one line and exits with status 1.
    """
