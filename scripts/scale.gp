# Growth curves of `scripts/bench scale` (log-log): every cost as a multiple of its value at
# the first stage, against the number of apps. Flat = constant; the dashed line = linear.
# Called by scripts/bench with datafile, outfile and stamp set.
set terminal svg size 1000,600 dynamic font "sans,12" background "white"
set termoption noenhanced
set output outfile
set logscale xy
set xlabel "apps on the token (3 key pairs each); ledger rows = 1000 × apps"
set ylabel "cost / cost at 10 apps"
set key outside right top font ",11"
set grid
set title "hsm-rotator: how each cost grows (".stamp.")"
set xrange [8:12500]
set yrange [0.1:20000]
plot datafile using 1:($1/10) with lines dt 2 lc "gray" title "linear in apps", \
     '' using 1:3 with linespoints lc rgb "#1f77b4" pt 7 title "start-up to ready", \
     '' using 1:4 with linespoints lc rgb "#ff7f0e" pt 7 title "RSS after load", \
     '' using 1:5 with linespoints lc rgb "#2ca02c" pt 7 title "ES256 issuance p99", \
     '' using 1:13 with linespoints lc rgb "#d62728" pt 7 title "ES256 issuance rate", \
     '' using 1:6 with linespoints lc rgb "#9467bd" pt 7 title "ES256 introspection p99", \
     '' using 1:7 with linespoints lc rgb "#8c564b" pt 7 title "JWKS p99", \
     '' using 1:8 with linespoints lc rgb "#e377c2" pt 7 title "rotation p99", \
     '' using 1:9 with linespoints lc rgb "#7f7f7f" pt 7 title "scheduler tick (1 % due)", \
     '' using 1:10 with linespoints lc rgb "#bcbd22" pt 7 title "ledger purge (10 % of rows)", \
     '' using 1:11 with linespoints lc rgb "#17becf" pt 4 title "SoftHSM find by CKA_ID (not on our path)", \
     '' using 1:12 with linespoints lc rgb "#000000" pt 4 title "SoftHSM C_Sign, known handle"
