"""hf_dpkd: differentially private knowledge distillation through synthetic text (DistilDP)."""

from hf_dpkd.privacy.accounting import PrivacyLedger

__version__ = "0.1.0"

__all__ = ["PrivacyLedger", "__version__"]
