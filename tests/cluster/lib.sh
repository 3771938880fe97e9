# shellcheck shell=bash
# Shared by tests/cluster/up and tests/cluster/down; sourced, not run.
# Expects $root (the repository root) to be set.
# shellcheck disable=SC2034 # the variables are used by the sourcing scripts

: "${root:?lib.sh needs root}"

# The binaries are always the repository's build; the state directory (data,
# certificates, logs, pids) can be moved to run a second, separate cluster
# (then also move its ports, see README.md).
# Physical paths (pwd -P): the servers are recognized by their executable and
# state paths, which the kernel reports resolved. Through a symlinked
# target/cluster (a second worktree sharing one cluster) logical paths would
# not match, and up would take the running cluster for a dead one.
mkdir -p "$root/target/cluster"
bin=$(cd "$root/target/cluster" && pwd -P)/bin
state=${MONIVAULT_CLUSTER_DIR:-$root/target/cluster}
mkdir -p "$state"
state=$(cd "$state" && pwd -P)
pki=$state/pki
logs=$state/logs
run=$state/run

# The servers this directory starts, in start order (down stops them reversed).
components=(etcd kube-apiserver)

# lock WHO: serializes up and down on one state directory (tests may start
# several at once); waits for the holder. Re-entrant: down run by up
# inherits the lock. The servers must not inherit fd 9 (see launch in up).
lock() {
	[[ ${MONIVAULT_CLUSTER_LOCKED:-} == "$state" ]] && return 0
	exec 9>"$state/.lock"
	if ! flock -n 9; then
		echo "$1: waiting for another tests/cluster/up or down on $state" >&2
		flock 9
	fi
	export MONIVAULT_CLUSTER_LOCKED=$state
}

# pid_of NAME: prints the pid recorded for NAME if that process is alive and
# still is our server (see is_ours); returns 1 otherwise.
pid_of() {
	local name=$1 pid
	[[ -r $run/$name.pid ]] || return 1
	pid=$(<"$run/$name.pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	is_ours "$pid" "$name" || return 1
	echo "$pid"
}

# is_ours PID NAME: true if PID is alive, its executable is $bin/NAME (also
# after a rebuild replaced the file, when the kernel says "(deleted)"), and its
# arguments name this state directory (so another state directory's cluster
# is never taken for ours).
is_ours() {
	local pid=$1 name=$2 exe
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	exe=${exe% (deleted)}
	[[ $exe == "$bin/$name" ]] || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$state/"
}

# strays NAME: pids of our NAME servers, whether or not a pid file names them
# (a pid file lost to a crash or a manual rm).
strays() {
	local name=$1 p pid
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		if is_ours "$pid" "$name"; then
			echo "$pid"
		fi
	done
}
