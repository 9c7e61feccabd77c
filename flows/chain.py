"""The stage order every flow follows: data -> teacher -> convert -> train (one task per curriculum
stage) -> evaluate -> register. A flow runs the chain up to its own stage; stages before it are
reused from their content-keyed caches, so running a later stage's flow repeats no finished work.
"""

from __future__ import annotations

from opdlm.pipeline.stages import stage_names
from tasks.context import PipelineRun
from tasks.convert import convert
from tasks.data import data
from tasks.evaluate import evaluate
from tasks.register import register
from tasks.teacher import teacher
from tasks.train import train_stage

STAGES = ("data", "teacher", "convert", "train", "evaluate", "register")


def run_until(run_file: str, last: str) -> dict:
    """Run the stages in order up to and including ``last``; returns each stage's record by name."""
    if last not in STAGES:
        raise ValueError(f"unknown stage {last!r}; stages: {', '.join(STAGES)}")
    records: dict = {"data": data(run_file)}
    if last == "data":
        return records
    records["teacher"] = teacher(run_file)
    if last == "teacher":
        return records
    records["convert"] = convert(run_file, records["teacher"])
    if last == "convert":
        return records
    checkpoint, train_records = None, []
    for stage in stage_names(PipelineRun.load(run_file).recipe()):
        record = train_stage(run_file, stage, records["teacher"], records["convert"], records["data"], checkpoint)
        checkpoint = record["checkpoint"]
        train_records.append(record)
    records["train"] = train_records
    if last == "train":
        return records
    records["evaluate"] = evaluate(run_file, records["teacher"], train_records[-1])
    if last == "evaluate":
        return records
    records["register"] = register(
        run_file, records["teacher"], records["data"], train_records[-1], records["evaluate"]
    )
    return records
