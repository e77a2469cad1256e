# distmap ssh run golden: 2 host(s), coordinator port 23456; one command per rank; 'stop' or end-of-file on its stdin gives the remote program SIGTERM and the grace period, 'kill' ends it at once
ssh -o BatchMode=yes -o ServerAliveInterval=15 node1 'cd -- /shared/distmap && exec sh -c '"'"'grace=$1; shift
exec 3<&0
setsid --wait "$@" </dev/null &
pg=$!
{ word=; while read -r word; do case $word in stop|kill) break;; esac; done <&3
  if [ "$word" = kill ]; then kill -s KILL -- "-$pg"; exit 0; fi
  kill -s TERM -- "-$pg"; end=$(( $(date +%s) + grace ))
  while [ "$(date +%s)" -lt "$end" ] && kill -s 0 -- "-$pg"; do sleep 0.2; done
  kill -s KILL -- "-$pg"; } >/dev/null 2>&1 &
wd=$!
exec 3<&-
fwd() { kill -s TERM -- "-$pg" 2>/dev/null; }
trap fwd TERM INT HUP
while :; do
  wait "$pg" 2>/dev/null; rc=$?
  kill -0 "$pg" 2>/dev/null || break
done
kill "$wd" 2>/dev/null
kill -s KILL -- "-$pg" 2>/dev/null
exit "$rc"
'"'"' distmap-rank 30 env DISTMAP_COORDINATOR=node1:23456 DISTMAP_NUM_PROCESSES=4 DISTMAP_PROCESS_ID=0 DISTMAP_LOCAL_DEVICE_IDS=0,1 CUDA_VISIBLE_DEVICES=0,1 DISTMAP_INIT_TIMEOUT=120 DISTMAP_STALL_TIMEOUT=120 DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 '"'"'XLA_FLAGS=--x=1 --y'"'"' python examples/ensemble.py '"'"'a b'"'"' '"'"''"'"'"'"'"'"'"'"'single'"'"'"'"'"'"'"'"''"'"' '"'"'"double"'"'"' '"'"'$(touch /tmp/distmap_pwned)'"'"' '"'"'; rm -rf /'"'"' '"'"'`id`'"'"' '"'"'line1
line2'"'"' '"'"'tab	here'"'"' '"'"'*'"'"' '"'"''"'"' -- --num_processes=9 %t '"'"'%j %%'"'"' '"'"'$(POD_IP)'"'"' '"'"'$$'"'"' '"'"'${HOME}'"'"' '"'"'ünï'"'"' '"'"'\'"'"' a=b=c '"'"'#not a comment'"'"' '"'"'-- x'"'"''
ssh -o BatchMode=yes -o ServerAliveInterval=15 node1 'cd -- /shared/distmap && exec sh -c '"'"'grace=$1; shift
exec 3<&0
setsid --wait "$@" </dev/null &
pg=$!
{ word=; while read -r word; do case $word in stop|kill) break;; esac; done <&3
  if [ "$word" = kill ]; then kill -s KILL -- "-$pg"; exit 0; fi
  kill -s TERM -- "-$pg"; end=$(( $(date +%s) + grace ))
  while [ "$(date +%s)" -lt "$end" ] && kill -s 0 -- "-$pg"; do sleep 0.2; done
  kill -s KILL -- "-$pg"; } >/dev/null 2>&1 &
wd=$!
exec 3<&-
fwd() { kill -s TERM -- "-$pg" 2>/dev/null; }
trap fwd TERM INT HUP
while :; do
  wait "$pg" 2>/dev/null; rc=$?
  kill -0 "$pg" 2>/dev/null || break
done
kill "$wd" 2>/dev/null
kill -s KILL -- "-$pg" 2>/dev/null
exit "$rc"
'"'"' distmap-rank 30 env DISTMAP_COORDINATOR=node1:23456 DISTMAP_NUM_PROCESSES=4 DISTMAP_PROCESS_ID=1 DISTMAP_LOCAL_DEVICE_IDS=0,1 CUDA_VISIBLE_DEVICES=2,3 DISTMAP_INIT_TIMEOUT=120 DISTMAP_STALL_TIMEOUT=120 DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 '"'"'XLA_FLAGS=--x=1 --y'"'"' python examples/ensemble.py '"'"'a b'"'"' '"'"''"'"'"'"'"'"'"'"'single'"'"'"'"'"'"'"'"''"'"' '"'"'"double"'"'"' '"'"'$(touch /tmp/distmap_pwned)'"'"' '"'"'; rm -rf /'"'"' '"'"'`id`'"'"' '"'"'line1
line2'"'"' '"'"'tab	here'"'"' '"'"'*'"'"' '"'"''"'"' -- --num_processes=9 %t '"'"'%j %%'"'"' '"'"'$(POD_IP)'"'"' '"'"'$$'"'"' '"'"'${HOME}'"'"' '"'"'ünï'"'"' '"'"'\'"'"' a=b=c '"'"'#not a comment'"'"' '"'"'-- x'"'"''
ssh -o BatchMode=yes -o ServerAliveInterval=15 me@node2 'cd -- /shared/distmap && exec sh -c '"'"'grace=$1; shift
exec 3<&0
setsid --wait "$@" </dev/null &
pg=$!
{ word=; while read -r word; do case $word in stop|kill) break;; esac; done <&3
  if [ "$word" = kill ]; then kill -s KILL -- "-$pg"; exit 0; fi
  kill -s TERM -- "-$pg"; end=$(( $(date +%s) + grace ))
  while [ "$(date +%s)" -lt "$end" ] && kill -s 0 -- "-$pg"; do sleep 0.2; done
  kill -s KILL -- "-$pg"; } >/dev/null 2>&1 &
wd=$!
exec 3<&-
fwd() { kill -s TERM -- "-$pg" 2>/dev/null; }
trap fwd TERM INT HUP
while :; do
  wait "$pg" 2>/dev/null; rc=$?
  kill -0 "$pg" 2>/dev/null || break
done
kill "$wd" 2>/dev/null
kill -s KILL -- "-$pg" 2>/dev/null
exit "$rc"
'"'"' distmap-rank 30 env DISTMAP_COORDINATOR=node1:23456 DISTMAP_NUM_PROCESSES=4 DISTMAP_PROCESS_ID=2 DISTMAP_LOCAL_DEVICE_IDS=0,1 CUDA_VISIBLE_DEVICES=0,1 DISTMAP_INIT_TIMEOUT=120 DISTMAP_STALL_TIMEOUT=120 DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 '"'"'XLA_FLAGS=--x=1 --y'"'"' python examples/ensemble.py '"'"'a b'"'"' '"'"''"'"'"'"'"'"'"'"'single'"'"'"'"'"'"'"'"''"'"' '"'"'"double"'"'"' '"'"'$(touch /tmp/distmap_pwned)'"'"' '"'"'; rm -rf /'"'"' '"'"'`id`'"'"' '"'"'line1
line2'"'"' '"'"'tab	here'"'"' '"'"'*'"'"' '"'"''"'"' -- --num_processes=9 %t '"'"'%j %%'"'"' '"'"'$(POD_IP)'"'"' '"'"'$$'"'"' '"'"'${HOME}'"'"' '"'"'ünï'"'"' '"'"'\'"'"' a=b=c '"'"'#not a comment'"'"' '"'"'-- x'"'"''
ssh -o BatchMode=yes -o ServerAliveInterval=15 me@node2 'cd -- /shared/distmap && exec sh -c '"'"'grace=$1; shift
exec 3<&0
setsid --wait "$@" </dev/null &
pg=$!
{ word=; while read -r word; do case $word in stop|kill) break;; esac; done <&3
  if [ "$word" = kill ]; then kill -s KILL -- "-$pg"; exit 0; fi
  kill -s TERM -- "-$pg"; end=$(( $(date +%s) + grace ))
  while [ "$(date +%s)" -lt "$end" ] && kill -s 0 -- "-$pg"; do sleep 0.2; done
  kill -s KILL -- "-$pg"; } >/dev/null 2>&1 &
wd=$!
exec 3<&-
fwd() { kill -s TERM -- "-$pg" 2>/dev/null; }
trap fwd TERM INT HUP
while :; do
  wait "$pg" 2>/dev/null; rc=$?
  kill -0 "$pg" 2>/dev/null || break
done
kill "$wd" 2>/dev/null
kill -s KILL -- "-$pg" 2>/dev/null
exit "$rc"
'"'"' distmap-rank 30 env DISTMAP_COORDINATOR=node1:23456 DISTMAP_NUM_PROCESSES=4 DISTMAP_PROCESS_ID=3 DISTMAP_LOCAL_DEVICE_IDS=0,1 CUDA_VISIBLE_DEVICES=2,3 DISTMAP_INIT_TIMEOUT=120 DISTMAP_STALL_TIMEOUT=120 DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 '"'"'XLA_FLAGS=--x=1 --y'"'"' python examples/ensemble.py '"'"'a b'"'"' '"'"''"'"'"'"'"'"'"'"'single'"'"'"'"'"'"'"'"''"'"' '"'"'"double"'"'"' '"'"'$(touch /tmp/distmap_pwned)'"'"' '"'"'; rm -rf /'"'"' '"'"'`id`'"'"' '"'"'line1
line2'"'"' '"'"'tab	here'"'"' '"'"'*'"'"' '"'"''"'"' -- --num_processes=9 %t '"'"'%j %%'"'"' '"'"'$(POD_IP)'"'"' '"'"'$$'"'"' '"'"'${HOME}'"'"' '"'"'ünï'"'"' '"'"'\'"'"' a=b=c '"'"'#not a comment'"'"' '"'"'-- x'"'"''
