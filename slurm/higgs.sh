#!/bin/bash
# SMA pretraining on HIGGS (4-layer Transformer, 28 features).
# Submit from the repository root: sbatch slurm/higgs.sh
# Adapt with SMA_* environment variables (slurm/launch.sh, README "Multi-node (Slurm)").
#SBATCH --job-name=sma-higgs
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

SMA_CONFIG=${SMA_CONFIG:-configs/higgs_4l.yaml}
source "${SMA_ROOT:-$SLURM_SUBMIT_DIR}/slurm/launch.sh"
