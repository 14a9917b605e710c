"""Recipe execution: stages, run directories, manifests, resume, reports."""
from edgekit.pipeline.runner import RunResult, run_recipe
from edgekit.pipeline.stages import STAGES, Stage, StageConfig, StageContext, StageOutput, Variant, register_stage

__all__ = ["RunResult", "STAGES", "Stage", "StageConfig", "StageContext", "StageOutput",
           "Variant", "register_stage", "run_recipe"]
