"""Shared test setup. Fixture modules register themselves in `pytest_plugins`."""

import os

# Keep TF quiet, and make PreemptionCheckpointHandler's GCP metadata probe fail
# fast instead of waiting on a network that tests must never touch.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")
os.environ.setdefault("NO_GCE_CHECK", "true")

pytest_plugins: list[str] = ["tests.gcs_fixtures", "tests.launch_fixtures",
                             "tests.record_fixtures", "tests.trainer_fixtures"]
