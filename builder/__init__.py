"""Korean domain chatbot builder."""

import os

# torch and llama.cpp both run on OpenMP, whose waiting threads spin by default. Two jobs at once
# on few cores (training beside a chat, two test workers) then crawl: a training step of the
# embedded model took 72 s with both spinning and 56 s with passive waiting (27 s either way
# alone). Read when OpenMP loads, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
