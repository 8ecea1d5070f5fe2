//! Process signals: SIGINT/SIGTERM end the daemon, SIGXFSZ is ignored. (SIGHUP, the reload,
//! is in [`crate::reload`].)

/// Makes a write past a file-size limit (`ulimit -f`, `prlimit --fsize`, a container's limit)
/// fail with `EFBIG` instead of killing the process: by default the kernel's `SIGXFSZ`
/// terminates it, dropping every request in flight. With the signal ignored, SQLite reports an
/// I/O error, the writer refuses the batch and webhooks get 503 like for any storage fault.
/// `main` calls this before anything is written; children inherit the ignored disposition,
/// and orderwatch starts none.
pub fn ignore_file_size_signal() {
    #[cfg(unix)]
    {
        // SAFETY: `signal` with `SIG_IGN` installs no handler code; it only changes this
        // process's disposition for one signal, before any other thread exists.
        let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        if previous == libc::SIG_ERR {
            eprintln!(
                "orderwatch: cannot ignore SIGXFSZ ({}); a file-size limit would kill the process",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the daemon");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}
