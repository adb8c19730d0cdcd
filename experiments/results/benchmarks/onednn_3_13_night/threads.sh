# Per-thread CPU time of VGG-D's step (width 1, batch 64) over 20 s of steady state,
# from /proc, as PERFORMANCE.md (2026-12-06 late night) reports it. Run from the
# repository root: bash experiments/results/benchmarks/onednn_3_13_night/threads.sh
python -m vgg_jax.benchmark --image_size=32 --num_classes=10 --variant=D --width=1 \
    --fc_width=512 --batch_size=64 --steps=5 --windows=20 --measure=train > /dev/null 2>&1 &
PID=$!
snap() {  # thread id, name, utime + stime in clock ticks
  for t in /proc/$PID/task/*; do
    echo "$(basename "$t") $(tr ' ' '_' < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done 2>/dev/null | sort
}
sleep 30; snap > /tmp/threads_a.txt
sleep 20; snap > /tmp/threads_b.txt
wait $PID
join /tmp/threads_a.txt /tmp/threads_b.txt |
  awk '{d = ($5 - $3) / 100; if (d > 0.05) printf "%-8s %-16s %.2f s of CPU\n", $1, $2, d}'
