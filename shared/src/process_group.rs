//! A child's process group, killed whole: what the child started (a helper, an agent
//! holding its output) goes with it. The child must have been started as the group's
//! leader (`CommandExt::process_group(0)`), so the group is never this process's.

/// The process group a child leads.
#[derive(Debug)]
pub struct ProcessGroup(libc::pid_t);

impl ProcessGroup {
    /// The group led by the child `pid`; `None` for a pid that is not one.
    pub fn led_by(pid: u32) -> Option<Self> {
        libc::pid_t::try_from(pid).ok().filter(|p| *p > 0).map(Self)
    }

    /// Kills every process in the group (one already gone is no matter).
    pub fn kill(&self) {
        // SAFETY: killpg only sends a signal, to a group a child of ours leads (`led_by`
        // refuses 0 and negative ids, which would name this process's own group or all).
        unsafe {
            libc::killpg(self.0, libc::SIGKILL);
        }
    }

    /// This group, killed when the guard is dropped: whatever ends a wait (its time, a
    /// cancelled run, an error) ends the group too.
    pub fn killed_on_drop(self) -> KilledOnDrop {
        KilledOnDrop(self)
    }
}

/// A [`ProcessGroup`] killed when this is dropped.
#[derive(Debug)]
pub struct KilledOnDrop(ProcessGroup);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    #[test]
    fn no_group_for_an_id_that_would_name_ours_or_all() {
        assert!(ProcessGroup::led_by(0).is_none());
        assert!(ProcessGroup::led_by(u32::MAX).is_none());
    }

    /// A shell that leaves a background child: dropping the guard kills both.
    #[test]
    fn the_whole_group_goes_when_the_guard_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("child.pid");
        let mut leader = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 60 & echo $! > {}; wait", pid_file.display()))
            .process_group(0)
            .spawn()
            .expect("sh");
        let guard = ProcessGroup::led_by(leader.id())
            .expect("a group")
            .killed_on_drop();
        let started = std::time::Instant::now();
        let child: libc::pid_t = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(started.elapsed().as_secs() < 10, "the child never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        drop(guard);
        // The leader ends, and the background child is killed too (a zombie until whoever
        // adopted it reaps it), long before its sleep would end.
        let ended = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            matches!(leader.try_wait(), Ok(Some(_)))
        });
        assert!(ended, "the group's leader outlived the guard");
        let gone = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let state = std::fs::read_to_string(format!("/proc/{child}/stat")).ok();
            // The state follows the command's closing parenthesis.
            state.is_none_or(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        });
        assert!(gone, "the background child outlived its group");
    }
}
