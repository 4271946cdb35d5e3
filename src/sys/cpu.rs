//! Pinning a thread to one CPU (`sched_setaffinity(2)`, see `cpuset(7)`),
//! for the benchmark's placements and `ipclab serve --pin-cpu`.

use std::io;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs this process may run on, lowest first.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return vec![0];
    };
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Pin the calling thread to `cpu`; returns the mask it had, to undo it
/// with [`restore`]. A thread started afterwards inherits the pinning.
pub fn pin_this_thread(cpu: usize) -> io::Result<CpuSet> {
    let old = sched_getaffinity(Pid::from_raw(0))?;
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(old)
}

/// Give the calling thread back the mask [`pin_this_thread`] returned.
pub fn restore(mask: &CpuSet) -> io::Result<()> {
    sched_setaffinity(Pid::from_raw(0), mask)?;
    Ok(())
}
