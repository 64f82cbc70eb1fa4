"""recbole-cllm4rec: CLLM4Rec (Zhu et al., WWW 2024) as a RecBole plugin.

Importing this package applies the RecBole 1.2.1 compatibility fixes and registers ``CLLM4Rec`` and
``CLLM4RecTrainer`` with RecBole, so RecBole's own API (``run_recbole(model='CLLM4Rec')``,
``objective_function``, ``load_data_and_model``) works unchanged.
"""

from pathlib import Path

from recbole_cllm4rec import compat

compat.apply()

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402
from recbole_cllm4rec.profiles import profile_file, resolve_profile  # noqa: E402
from recbole_cllm4rec.trainer import CLLM4RecTrainer  # noqa: E402

PROPERTIES_DIR = Path(__file__).parent / "properties"
DEFAULT_CONFIG_FILE = PROPERTIES_DIR / "model" / "CLLM4Rec.yaml"



def cllm4rec_defaults(user_settings, internal_settings):
    """The model's defaults, then the profile the run resolves to (recorded as ``profile_applied``)."""
    name, reason = resolve_profile(user_settings)
    internal_settings["profile_applied"] = name
    internal_settings["profile_reason"] = reason
    return [DEFAULT_CONFIG_FILE] + ([profile_file(name)] if name != "none" else [])


compat.register_model(CLLM4Rec, CLLM4RecTrainer, cllm4rec_defaults)

__all__ = ["CLLM4Rec", "CLLM4RecTrainer", "DEFAULT_CONFIG_FILE"]
__version__ = "0.1.0"
