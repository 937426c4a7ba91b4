"""ltpipe: a feature-cache pipeline for long-tailed image recognition.

Stage one trains backbones, a cache holds their features, and cheap classifier-stage jobs
(cRT, LWS, tau-norm, NCM, logit adjustment, FFN, H2T, FSA, BWLM, AFA+cRT) run on the cache.
"""

__version__ = "0.1.0"
