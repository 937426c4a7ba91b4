"""An example ltpipe plug-in (see ltpipe's docs/extending.md): the classifier-stage method
``bsr`` (balanced-softmax retraining), the data source ``digits_step`` and the architecture
``tiny_cnn``, declared as entry points in pyproject.toml."""
