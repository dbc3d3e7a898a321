"""litflow curation.

albumentations (imported by img2dataset's resizer) asks PyPI for its latest version when it
is imported, unless NO_ALBUMENTATIONS_UPDATE is set first. Setting it here, when the package
is first imported, comes before any curation module can import img2dataset, in the command
and in every process it starts (spawned workers and Spark executors inherit the environment
and import this package to unpickle their work): litflow contacts no host the user did not name.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
