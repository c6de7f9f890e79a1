# Shared body of slurm/{text,protein,higgs}.sh; sourced by them after their #SBATCH header, not submitted.
#
# One launcher per node (srun --ntasks-per-node=1), each a torchrun starting one training process per GPU,
# all meeting at a c10d rendezvous on the allocation's first host. Preemption: the #SBATCH
# --signal=B:USR1@T warning (or `scancel --signal=USR1 --batch JOBID`) reaches this shell, which passes
# SIGUSR1 to every process of the training step; the trainer finishes its step, saves a checkpoint and
# exits 124, and this script requeues the job. The requeued job runs with resume=auto in the same run
# directory, so it continues from that checkpoint.
#
# Adjust with environment variables (sbatch passes the submitting shell's environment to the job):
#   SMA_CONFIG         config file, relative to the repository (each script sets its default)
#   SMA_RUN_DIR        run directory; default runs/<job name>-<job id> (the id survives requeues)
#   SMA_GPUS_PER_NODE  training processes per node; default the GPUs Slurm gave the node, else 1 (CPU)
#   SMA_OVERRIDES      extra key=value overrides, space separated, e.g. "max_steps=20000 zero_stage=3"
#   SMA_RDZV_PORT      rendezvous port on the first host; default 20000 + job id mod 10000
#   SMA_PYTHON         interpreter with sma installed; default python3 from PATH
#   SMA_ROOT           the repository; default the folder sbatch was run from

set -euo pipefail

SMA_ROOT=${SMA_ROOT:-$SLURM_SUBMIT_DIR}
if [[ ! -f "$SMA_ROOT/train/pretrain.py" ]]; then
    echo "launch: no train/pretrain.py under '$SMA_ROOT'; run sbatch from the repository root or set SMA_ROOT" >&2
    exit 2
fi
cd "$SMA_ROOT"
# The checkout being launched is the code that runs, whatever sma the interpreter has installed.
export PYTHONPATH="$SMA_ROOT${PYTHONPATH:+:$PYTHONPATH}"

SMA_CONFIG=${SMA_CONFIG:?each slurm/*.sh sets SMA_CONFIG before sourcing launch.sh}
SMA_RUN_DIR=${SMA_RUN_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
SMA_PYTHON=${SMA_PYTHON:-python3}
gpus=${SMA_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
(( gpus > 0 )) || gpus=1
port=${SMA_RDZV_PORT:-$(( 20000 + SLURM_JOB_ID % 10000 ))}
read -r -a overrides <<< "${SMA_OVERRIDES:-}"

# Rendezvous on the first host of the allocation. Its Slurm name does not always resolve (e.g. nodes
# known to Slurm by alias); then use the address slurmctld itself reaches it at.
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')
if getent hosts "$head_node" > /dev/null; then
    head_addr=$head_node
else
    head_addr=$(scontrol show node "$head_node" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
fi

echo "launch: job ${SLURM_JOB_ID} run ${SLURM_RESTART_COUNT:-0}: ${SLURM_NNODES} nodes x ${gpus} processes," \
     "rendezvous ${head_addr}:${port}, config ${SMA_CONFIG}, run_dir ${SMA_RUN_DIR}" >&2

forward_preemption() {
    echo "launch: SIGUSR1 received; asking the trainer to checkpoint and exit" >&2
    # Signal the numbered (srun) steps only: every process in them gets it, the node launchers ignore
    # it. `scancel --signal=USR1 JOBID` would also reach the extern step that sites with
    # PrologFlags=Contain run, whose placeholder process dies of SIGUSR1.
    local step
    for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o %i | grep -E '\.[0-9]+$' || true); do
        scancel --signal=USR1 "$step" || true
    done
}
trap forward_preemption USR1

# srun no longer inherits --cpus-per-task (Slurm >= 22.05); pass it on so torchrun's workers get the cores.
srun --ntasks-per-node=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
    "$SMA_PYTHON" slurm/node_launcher.py \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$gpus" --max_restarts 0 \
    --rdzv_backend c10d --rdzv_endpoint "${head_addr}:${port}" --rdzv_id "$SLURM_JOB_ID" \
    train/pretrain.py --config "$SMA_CONFIG" resume=auto run_dir="$SMA_RUN_DIR" "${overrides[@]}" &
srun_pid=$!
# Bash runs a trap only once the foreground command returns, so wait on a background srun: `wait`
# returns early on the signal, the trap runs, and the loop goes back to waiting for srun's real status.
while true; do
    status=0
    wait "$srun_pid" || status=$?
    kill -0 "$srun_pid" 2> /dev/null || break
done

if (( status == 124 )); then
    echo "launch: the trainer saved a checkpoint and asked to be requeued; requeueing job ${SLURM_JOB_ID}" >&2
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
