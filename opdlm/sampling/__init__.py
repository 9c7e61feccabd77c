"""The block-diffusion sampler (rollouts, evaluation and serving use the same one) and AR decoding."""

from opdlm.sampling.output import SampleBatch

__all__ = ["SampleBatch"]
