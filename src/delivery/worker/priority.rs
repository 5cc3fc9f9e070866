//! The journal thread's scheduling priority (called once, on that thread). Records reach the
//! journal only when this thread runs, so on a machine whose cores are all busy it asks for a
//! higher priority than the threads around it (nice [`NICE`]; it sleeps almost all the time, so it
//! takes little from them). That needs root or CAP_SYS_NICE (or an RLIMIT_NICE that allows it);
//! when refused it is logged once and the thread runs at the process's priority.

/// The journal thread's nice value (the process's default is 0).
const NICE: i32 = -10;

/// Best effort: lowers this thread's nice value to [`NICE`].
pub(super) fn raise() {
    // SAFETY: gettid has no preconditions; setpriority(PRIO_PROCESS, tid) changes only the calling
    // thread's nice value on Linux.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if rc != 0 {
        log::info!(
            "the usage journal thread keeps the process's scheduling priority (setpriority to nice {NICE} refused: {}); on a machine whose cores are all busy, records may reach the journal later than crash_window (grant CAP_SYS_NICE to avoid that)",
            std::io::Error::last_os_error()
        );
    }
}
