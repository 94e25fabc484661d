"""tollgate: account-lifecycle workflows (signup, payment method, credit, invoice) driven by rules.yaml.

One import package over the customer's folders: `tollgate.workflows` (the pure core, in
`workflows/`), `tollgate.service` (storage, application, HTTP API, CLI, in `service/`) and
`tollgate.schemas` (JSON Schemas, in `schemas/`). `tollgate.bundled` finds the files the wheel ships:
the default `rules.yaml`, the workflow definitions, the schemas and the migrations.
"""

from importlib.metadata import PackageNotFoundError, version

#: The distribution's name on PyPI (`tollgate` itself belongs to an unrelated project).
DISTRIBUTION = "tollgate-workflows"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
