# GRPO training of one replicate of a run (its {seed}: `runs.<run>.seeds`, one by default). The
# declared output is the replicate's directory of checkpoint manifests (one per configured step;
# per-run checkpoint lists make a fixed file list impossible). TRL's own state lives in
# results/runs/{run}/seed-{seed}/trainer/, outside declared outputs, so a rerun of an
# interrupted job resumes from its newest checkpoint-N instead of starting over. `--run` is the
# job's aha.run.Run as one JSON argument (its seed is TRL's grpo.seed), so the log shows exactly
# what trained. The command is the mode's launcher (aha.launch.commands.train_command): `python -m aha
# train` (cpu, qlora); under `accelerate launch` (DeepSpeed ZeRO-3: zero3), on all GPUs with vLLM
# colocated, or on all but the last with vLLM's `vllm serve` started there (on 127.0.0.1, on
# ports the job chooses) and always stopped. Its stop timeouts all follow from the one
# `--signal=TERM@N` of the job's slurm_extra (aha.launch.commands.StopBudget); the log's first line says
# how. A run across nodes (runs.<run>.nodes) asks SLURM for them, and its command calls srun
# itself (common.smk, train_nodes and the resources after it; aha.launch.nodes).
rule train:
    wildcard_constraints:
        **RUN_SEED,
    input:
        train=f"{DATA}/train.parquet",
        model=model_input,
    output:
        checkpoints=directory(f"{RUN_DIR}/checkpoints"),
        log_history=f"{RUN_DIR}/train_log.jsonl",
    params:
        run=lambda wc, resources: train_run(wc, resources).to_json(),
        model=model_path,
        data_dir=lambda wc, input: os.path.dirname(input.train),
        out_dir=lambda wc: RUN_DIR.format(**wc),
        launch=launch_command,
        stop_budget=stop_budget_line,
        gpu_log=gpu_log("train"),
    threads: train_threads
    resources:
        gpu=train_gpus,
        nodes=train_nodes,
        tasks=train_tasks,
        mpi=train_mpi,
        tasks_per_gpu=train_tasks_per_gpu,
        gres=train_gres,
    log:
        "logs/train/{run}-seed{seed}.log",
    benchmark:
        BENCHMARKS["train"]
    conda:
        "../../environment.yml"
    shell:
        "echo {params.stop_budget:q} > {log} && python -m aha check-gpu "
        "--run {params.run:q} --model {params.model} >> {log} 2>&1 && "
        "{params.gpu_log} OMP_NUM_THREADS={threads} exec {params.launch} --run {params.run:q} "
        "--data-dir {params.data_dir} --model {params.model} --out-dir {params.out_dir} "
        ">> {log} 2>&1"
