"""Samplers: the frozen generator of a finished run, beneath export and training.

A sampler is what ``run_files.final.load_final`` returns for a run's ``final/`` (weights verified against
the run's hashes): it makes chunks of samples with their metadata (``make``), describes itself for a
manifest (``export_info``) and serves the naive baseline (``sampler``). Export asks a sampler for chunks
(``write.write_samples``); the trainers of ``producers/`` build on samplers (the diffusion trainer writes its
pools through the same writer, the cGAN trainer starts from another run's sampler, the naive baseline
samples one). A producer that only samples (a user's frozen generator) is a sampler alone
(``frozen.FrozenSampler``).
"""
