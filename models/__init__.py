"""VideoTag networks, weights, video decoding and the inference chain."""

import warnings

# Paddle warns on import about its C++ extension builder, which is never used here.
warnings.filterwarnings("ignore", message="No ccache found")
