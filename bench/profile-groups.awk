# Groups `perf report --no-children --sort dso,sym --stdio -g none` lines
# ("  12.34%  dso  [.] symbol") by where the time is spent; used by
# bench/profile.sh. The first matching rule wins.
/^ +[0-9.]+%/ {
  pct = $1; sub(/%/, "", pct)
  line = $0
  if (line ~ /\[k\]/) g = "kernel (syscalls, scheduler, TCP)"
  else if (line ~ /malloc|free|realloc|calloc|_int_|arena|tcache/) g = "allocator"
  else if (line ~ /memcpy|memmove|memset|memcmp|bcmp/) g = "memcpy/memmove/memset"
  else if (line ~ /h2::/) g = "h2 (HTTP/2)"
  else if (line ~ /hyper_util::/) g = "hyper-util (client pool, server glue)"
  else if (line ~ /hyper::/) g = "hyper (HTTP/1, body, dispatch)"
  else if (line ~ /tokio::|mio::/) g = "tokio (scheduler, I/O driver, timers)"
  else if (line ~ /tether|ws_io/) g = "tether (our code)"
  else if (line ~ /http::|httparse|bytes::|indexmap|hashbrown/) g = "http/httparse/bytes/maps"
  else if (line ~ /tracing|serde|fmt::|core::fmt/) g = "tracing/serde/fmt"
  else if (line ~ /libc|pthread|syscall|epoll|__send|__recv|__write|__read/) g = "libc (syscall wrappers)"
  else g = "other"
  sum[g] += pct
}
END {
  for (g in sum) printf "%6.1f%%  %s\n", sum[g], g | "sort -rn"
}
