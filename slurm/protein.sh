#!/bin/bash
# SMA pretraining on proteins (16-layer Perceiver, n=1024).
# Submit from the repository root: sbatch slurm/protein.sh
# Adapt with SMA_* environment variables (slurm/launch.sh, README "Multi-node (Slurm)").
#SBATCH --job-name=sma-protein
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

SMA_CONFIG=${SMA_CONFIG:-configs/protein_16l.yaml}
source "${SMA_ROOT:-$SLURM_SUBMIT_DIR}/slurm/launch.sh"
