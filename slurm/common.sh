#!/usr/bin/env bash
# Sourced by the batch scripts of slurm/ (never run): the worker layout of a node, the
# job's first log line, one-node training, and the driver run that survives preemption: on
# Slurm's warning signal the run checkpoints, the job requeues itself, and the requeued job
# (same job id, so same OUTPUT_DIR) resumes from that checkpoint.
#
# The functions read the variables set at the top of each batch script: REPO_DIR, PYTHON,
# GPUS_PER_NODE, WORKERS_PER_NODE, CPUS_PER_WORKER, OUTPUT_DIR.

# launch/train.py's exit status when it stopped early with a checkpoint to resume from
# (framework.train.stopping.EXIT_RESUMABLE).
EXIT_RESUMABLE=75

fail() {
  echo "error: $*" >&2
  exit 1
}

# default_workers_per_node GPUS_PER_NODE: one worker per GPU; one CPU worker without GPUs.
default_workers_per_node() {
  if (($1 > 0)); then echo "$1"; else echo 1; fi
}

# default_cpus_per_worker WORKERS_PER_NODE: the node's CPUs shared out, at least one each.
default_cpus_per_worker() {
  local cpus=$((${SLURM_CPUS_ON_NODE:-1} / $1))
  echo $((cpus > 0 ? cpus : 1))
}

# begin_job: the line that says where this job's output and log go; then work from the
# repository (launch/ and conf/ are found relative to it).
begin_job() {
  echo "job ${SLURM_JOB_ID}: OUTPUT_DIR=${OUTPUT_DIR}" \
    "log=${SLURM_SUBMIT_DIR}/slurm/logs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}.out"
  cd "$REPO_DIR" || exit
}

# cluster_overrides NUM_WORKERS: the Hydra overrides that fit the run to the allocation,
# into the array CLUSTER_OVERRIDES (the script's own arguments come after them and win).
cluster_overrides() {
  CLUSTER_OVERRIDES=(
    "cluster.num_workers=$1"
    "cluster.cpus_per_worker=$CPUS_PER_WORKER"
    "run.output_dir=$OUTPUT_DIR"
  )
  if ((GPUS_PER_NODE > 0)); then
    if ((WORKERS_PER_NODE > GPUS_PER_NODE)); then
      fail "WORKERS_PER_NODE=$WORKERS_PER_NODE is more than GPUS_PER_NODE=$GPUS_PER_NODE:" \
        "each worker needs a GPU of its own; lower WORKERS_PER_NODE"
    fi
    # Whole GPUs only: a fraction would put two ranks on one GPU, which NCCL refuses.
    local per_worker=$((GPUS_PER_NODE / WORKERS_PER_NODE))
    local idle=$((GPUS_PER_NODE - per_worker * WORKERS_PER_NODE))
    if ((idle > 0)); then
      echo "note: $WORKERS_PER_NODE workers of $per_worker GPUs each leave $idle of the" \
        "node's $GPUS_PER_NODE GPUs idle: WORKERS_PER_NODE that divides GPUS_PER_NODE uses" \
        "them all" >&2
    fi
    CLUSTER_OVERRIDES+=(
      "cluster.use_gpu=true"
      "cluster.gpus_per_worker=$per_worker"
    )
  else
    CLUSTER_OVERRIDES+=("cluster.use_gpu=false")
  fi
}

# ray_node_step_flags: the srun options of the step that runs one node's Ray, into the
# array RAY_NODE_STEP_FLAGS (the caller adds -w HOST). The step takes the whole node.
ray_node_step_flags() {
  # srun does not pass on sbatch's --cpus-per-task (Slurm >= 22.05): ask for the CPUs.
  RAY_NODE_STEP_FLAGS=(--nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_ON_NODE")
  if ((GPUS_PER_NODE > 0)); then
    # In the allocation's own terms: sbatch --gpus-per-node exports SLURM_GPUS_PER_NODE,
    # which srun reads as --gpus-per-node, and Slurm >= 26.05 refuses a step that adds
    # --gres=gpu:N to it ("--gpus-per-node and --gres=gpu are mutually exclusive").
    # --gpu-bind=none: the one task (Ray's node) sees every GPU of the step, whatever
    # binding the site or the submitter's environment (SLURM_GPU_BIND) asks for.
    RAY_NODE_STEP_FLAGS+=(--gpus-per-node="$GPUS_PER_NODE" --gpu-bind=none)
  fi
}

# ray_node_start_flags: the resources `ray start` gives its node, into the array
# RAY_NODE_START_FLAGS: those of its step, so that Ray neither counts GPUs of the node
# outside the step nor finds GPUs of its own when the workers are CPU workers.
ray_node_start_flags() {
  # shellcheck disable=SC2034 # read by train_multi_node.sbatch
  RAY_NODE_START_FLAGS=(--num-cpus="$SLURM_CPUS_ON_NODE" --num-gpus="$GPUS_PER_NODE")
}

# train_on_one_node OVERRIDES...: launch/train.py with WORKERS_PER_NODE workers on a Ray it
# starts privately inside this job; returns as run_resumable does.
train_on_one_node() {
  cluster_overrides "$WORKERS_PER_NODE"
  # Private even when the submitter's environment (which sbatch exports) names a cluster.
  unset RAY_ADDRESS
  run_resumable "$PYTHON" launch/train.py "${CLUSTER_OVERRIDES[@]}" "$@"
}

# run_resumable COMMAND...: runs the training driver and returns its status, except that a
# resumable stop requeues the job and returns 0. The driver runs in the background so that
# this shell can take Slurm's signals meanwhile (bash runs traps only between commands, and
# `wait` is one it interrupts).
run_resumable() {
  "$@" &
  DRIVER_PID=$!
  trap 'forward_to_driver USR1' USR1
  trap 'forward_to_driver TERM' TERM
  while kill -0 "$DRIVER_PID" 2>/dev/null; do
    wait "$DRIVER_PID" || true # also returns as soon as a trapped signal arrives
  done
  local status=0
  wait "$DRIVER_PID" || status=$?
  trap - USR1 TERM
  if ((status != EXIT_RESUMABLE)); then
    return "$status"
  fi
  echo "the run stopped at a checkpoint: requeueing job ${SLURM_JOB_ID}, which resumes from it"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "error: scontrol requeue ${SLURM_JOB_ID} failed: submit the job again to resume" >&2
    return "$status"
  fi
}

# forward_to_driver SIGNAL: the driver turns it into a checkpoint and a resumable stop.
forward_to_driver() {
  echo "SIG$1 received: the training driver checkpoints and stops"
  kill -s "$1" "$DRIVER_PID" 2>/dev/null || true
}
