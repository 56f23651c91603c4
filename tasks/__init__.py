"""The steps of the nightly recommender pipeline, as plain Python with typed inputs and outputs.

TFRS needs Keras 2: the flag must be set before TensorFlow is first imported, in every process.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
