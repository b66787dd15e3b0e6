"""The worker side of training: the loop, one optimizer step, the DeepSpeed engine, the
objective and its loss, the packing self-check and step metrics. No Ray, no Hydra."""
