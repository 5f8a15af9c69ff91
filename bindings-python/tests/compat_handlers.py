"""Handlers named by templates as ``compat_handlers.<name>`` (the autoload tests)."""


class Pull:
    """A class built with its step's config."""

    def __init__(self, config):
        self.page = config["page"]

    def call(self, step):
        return {"page": self.page, "attempt": step.attempt}


class Push:
    """A callable class without config."""

    def __call__(self, step):
        return {"pushed": step.inputs["pull"]["page"]}


def audit(step):
    return {"audited": True, "config": dict(step.config)}


NOT_CALLABLE = 3
