//! Windows backend: an I/O completion port fed by one-shot `IOCTL_AFD_POLL` requests.
//!
//! One completion port per poller. On it: the poller's AFD helper handle (completion key
//! [`KEY_AFD`]), through which every socket poll is issued, and the [`Waker`]'s packets (key
//! [`KEY_WAKER`], posted with `PostQueuedCompletionStatus`; no socket, no loopback).
//!
//! # Level-triggered on top of one-shot
//!
//! Each registration has at most one poll in flight, asking AFD for the events of its interest
//! (see [`afd_mask`]). A completion is consumed once: it becomes at most one [`Event`] and the
//! registration goes idle. Idle registrations are re-armed at the **start of the next
//! `wait`**: by then the reactor has handled the event and run its I/O to `WSAEWOULDBLOCK`
//! (and called `reregister` for every channel it touched). AFD looks at the socket's
//! current state when a poll is issued, so a condition that still holds completes the new
//! poll at once: every `wait` reports what is ready, like the level-triggered unix backends,
//! and a consumed condition is not reported again (no busy loop, no lost event).
//!
//! `reregister` with an unchanged interest costs nothing (the poller's registry does not pass
//! it on). A changed interest whose AFD mask differs from the one in flight cancels that poll
//! (`NtCancelIoFileEx`); the cancelled completion comes back through the port and the poll is
//! re-issued with the new mask in the same `wait`. A shrunk interest must not keep its old
//! poll: data the reactor no longer wants to read (backpressure) would complete it again and
//! again.
//!
//! # Ownership of the kernel-written memory
//!
//! Each registration owns one heap block, a [`PollState`]: the `IO_STATUS_BLOCK` and the
//! `AFD_POLL_INFO` of its poll. Its address is also the poll's `ApcContext`, which comes back
//! as the `lpOverlapped` of the completion entry. The protocol:
//!
//! 1. [`StatePtr::new`] allocates the block; the `Iocp` holds the only pointer to it, in
//!    exactly one place: the registration's [`Slot`], or the `zombies` map.
//! 2. Issuing a poll ([`Iocp::arm`], phase [`Phase::Idle`] -> [`Phase::Pending`]) lends the
//!    `iosb`/`info` fields to the kernel. From then until the completion entry carrying that
//!    address is **dequeued**, Rust neither reads nor writes them and never frees the block;
//!    phases `Pending` and `Cancelling` (and every zombie) mean "lent".
//! 3. Dequeuing the entry ends the loan: [`Iocp::complete_poll`] reads the result and the
//!    registration goes `Idle` (or `Closed` after `AFD_POLL_LOCAL_CLOSE`).
//! 4. Freeing: `deregister` frees an `Idle`/`Closed` block at once. A block on loan is
//!    cancelled and moved to `zombies`; its completion (usually `STATUS_CANCELLED`) frees it
//!    when it is dequeued and is not reported. `Drop` cancels every loan and drains the port
//!    until all have come back; blocks still on loan after [`DRAIN_LIMIT`] are leaked on
//!    purpose (never freed while the kernel may still write them).
//!
//! Completion entries are matched by address only against blocks that are still allocated
//! (a block's address cannot be reused before its completion is dequeued, because it is not
//! freed before), and each block records the token and generation it was made for, checked
//! again on completion. A completion for a deregistered socket therefore always finds a
//! zombie and is discarded, even if the socket handle value or the token has been reused.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::io;
use std::os::windows::io::RawSocket;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{ERROR_INVALID_HANDLE, STATUS_CANCELLED};
use windows_sys::Win32::Networking::WinSock::WSAENOTSOCK;
use windows_sys::Win32::System::IO::{IO_STATUS_BLOCK, OVERLAPPED_ENTRY};

use super::afd::{self, Afd, AfdPollInfo, Winsock};
use super::port::{CompletionPort, Waker, INFINITE, KEY_WAKER};
use crate::sys::poller::registry::Registrar;
use crate::sys::poller::{Event, Token, Triggers};

/// Completion key of the AFD helper handle: the entry's `lpOverlapped` is a [`PollState`].
const KEY_AFD: usize = 1;

/// Completion entries dequeued per `GetQueuedCompletionStatusEx` call.
const ENTRIES: usize = 256;

/// Most `GetQueuedCompletionStatusEx` calls per wait that find a full buffer (more ready
/// registrations are reported by the next wait).
const MAX_BATCHES: usize = 8;

/// How long `Drop` waits for cancelled polls to come back before leaking their memory.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What the kernel writes while a poll is in flight, plus the identity it was made for.
///
/// Only ever accessed through shared references and the raw pointers of the `UnsafeCell`s;
/// see the module docs for when those may be touched.
struct PollState {
    /// Written by the kernel when the poll completes.
    iosb: UnsafeCell<IO_STATUS_BLOCK>,
    /// Input and output buffer of the poll.
    info: UnsafeCell<AfdPollInfo>,
    /// The registration this block was made for (never changes).
    token: Token,
    /// Which registration of `token` (never changes).
    generation: u64,
}

/// The owning pointer to a heap [`PollState`] (a `Box` taken apart, so that the kernel may
/// write into it while Rust holds the pointer).
///
/// Dropping a `StatePtr` leaks the block; only [`StatePtr::free`] releases it.
struct StatePtr(NonNull<PollState>);

// SAFETY: a StatePtr is an owning pointer like Box<PollState>, used only by the thread that
// owns the Iocp; the kernel's writes go to UnsafeCell fields and are only read after the
// completion port has handed the completion over (which orders them).
unsafe impl Send for StatePtr {}

impl StatePtr {
    /// Allocates a block for the registration `token`/`generation`.
    fn new(token: Token, generation: u64) -> StatePtr {
        let state = Box::new(PollState {
            iosb: UnsafeCell::new(afd::new_io_status_block()),
            info: UnsafeCell::new(AfdPollInfo::new(0, 0)),
            token,
            generation,
        });
        StatePtr(NonNull::from(Box::leak(state)))
    }

    /// The block's address: the poll's `ApcContext` and the key of completion look-ups.
    fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }

    /// Shared access to the block.
    fn get(&self) -> &PollState {
        // SAFETY: the block stays allocated until `free` consumes self; only shared
        // references are ever made, and the fields the kernel writes are UnsafeCells.
        unsafe { self.0.as_ref() }
    }

    /// Releases the block.
    ///
    /// # Safety
    ///
    /// No poll may be in flight with this block: it was never issued, or the completion of
    /// its last poll has been dequeued.
    unsafe fn free(self) {
        // SAFETY: the pointer came from Box::leak in `new` and is freed once (self is
        // consumed); the caller guarantees the kernel no longer uses the memory.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Where a registration's poll stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No poll in flight; the block is ours. Re-armed at the next `wait` if queued.
    Idle,
    /// A poll for these AFD events is in flight; the block is the kernel's.
    Pending { mask: u32 },
    /// The poll in flight was cancelled; its completion re-arms with the current interest.
    Cancelling,
    /// The socket was closed under the registration (`AFD_POLL_LOCAL_CLOSE`, or an invalid
    /// handle when re-arming): nothing is polled or reported any more until `deregister`.
    Closed,
}

/// One registration's backend state.
struct Slot {
    /// The base provider's handle of the registered socket (what AFD polls).
    base: RawSocket,
    interest: Triggers,
    phase: Phase,
    /// The token is in `to_arm` (avoids queuing it twice).
    queued: bool,
    generation: u64,
    state: StatePtr,
}

/// The IOCP + AFD_POLL backend; see the module docs.
pub(crate) struct Iocp {
    port: Arc<CompletionPort>,
    afd: Afd,
    slots: HashMap<Token, Slot>,
    /// Block address -> token of the live registrations.
    by_addr: HashMap<usize, Token>,
    /// Blocks of deregistered sockets whose poll has not come back yet, by address.
    zombies: HashMap<usize, StatePtr>,
    /// Registrations to (re)arm at the start of the next wait pass.
    to_arm: Vec<Token>,
    next_generation: u64,
    /// Polls issued so far (tests check that nothing busy-loops).
    #[cfg(test)]
    polls_issued: u64,
    /// Declared last: Winsock stays started until everything above is gone.
    _winsock: Winsock,
}

/// The AFD events polled for an interest. Abort (reset), connect failure and local close
/// are always polled, so even interest `NONE` reports `ERR`/`HUP`, as epoll does. The peer's
/// graceful close (DISCONNECT, a half-close) only for a reader, like `EPOLLRDHUP`: it is the
/// end of what there is to read, and a writer told about it would be told again and again.
fn afd_mask(interest: Triggers) -> u32 {
    let mut mask = afd::POLL_ABORT | afd::POLL_CONNECT_FAIL | afd::POLL_LOCAL_CLOSE;
    if interest.contains(Triggers::RECV) {
        mask |= afd::POLL_RECEIVE | afd::POLL_DISCONNECT;
    }
    if interest.contains(Triggers::ACCEPT) {
        mask |= afd::POLL_ACCEPT | afd::POLL_RECEIVE | afd::POLL_DISCONNECT;
    }
    if interest.intersects(Triggers::SEND | Triggers::CONNECT) {
        mask |= afd::POLL_SEND;
    }
    mask
}

/// Maps signalled AFD events to triggers for `interest`:
///
/// * `RECEIVE` -> `RECV` (or `ACCEPT` if the interest is `ACCEPT`); `ACCEPT` -> `ACCEPT`;
/// * `SEND` -> `SEND`, or `CONNECT` if the interest is `CONNECT`;
/// * `DISCONNECT` (peer FIN) -> `HUP`, plus `RECV` so the reactor reads to end of stream;
/// * `ABORT` (reset) -> `ERR | HUP`;
/// * `CONNECT_FAIL` -> `ERR`, plus `CONNECT` if the interest is `CONNECT`.
///
/// `LOCAL_CLOSE` is handled before (it ends the registration).
fn afd_triggers(events: u32, interest: Triggers) -> Triggers {
    let mut t = Triggers::NONE;
    if events & afd::POLL_RECEIVE != 0 {
        if interest.contains(Triggers::RECV) {
            t |= Triggers::RECV;
        } else if interest.contains(Triggers::ACCEPT) {
            t |= Triggers::ACCEPT;
        }
    }
    if events & afd::POLL_ACCEPT != 0 && interest.contains(Triggers::ACCEPT) {
        t |= Triggers::ACCEPT;
    }
    if events & afd::POLL_SEND != 0 {
        if interest.contains(Triggers::SEND) {
            t |= Triggers::SEND;
        } else if interest.contains(Triggers::CONNECT) {
            t |= Triggers::CONNECT;
        }
    }
    if events & afd::POLL_DISCONNECT != 0 {
        t |= Triggers::HUP;
        if interest.contains(Triggers::RECV) {
            t |= Triggers::RECV;
        }
    }
    if events & afd::POLL_ABORT != 0 {
        t |= Triggers::ERR | Triggers::HUP;
    }
    if events & afd::POLL_CONNECT_FAIL != 0 {
        t |= Triggers::ERR;
        if interest.contains(Triggers::CONNECT) {
            t |= Triggers::CONNECT;
        }
    }
    t
}

/// Whether a failed poll or base-handle query means the socket handle is gone.
fn is_closed_socket(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == ERROR_INVALID_HANDLE as i32 || c == WSAENOTSOCK)
}

/// Milliseconds until `deadline` for `GetQueuedCompletionStatusEx`, rounded up so that a
/// sub-millisecond wait does not become a busy 0; [`INFINITE`] without a deadline. A longer
/// wait than `u32` milliseconds is cut short (and continued by the caller's loop).
fn timeout_ms(deadline: Option<Instant>) -> u32 {
    let Some(deadline) = deadline else {
        return INFINITE;
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let ms = remaining.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(INFINITE - 1).min(INFINITE - 1)
}

impl Iocp {
    /// Creates the completion port, the AFD helper handle and the waker posting to the port.
    pub(crate) fn new() -> io::Result<(Iocp, Waker)> {
        let winsock = Winsock::start()?;
        let port = Arc::new(CompletionPort::new()?);
        let afd = Afd::open(&port, KEY_AFD)?;
        let waker = Waker::new(Arc::clone(&port));
        let iocp = Iocp {
            port,
            afd,
            slots: HashMap::new(),
            by_addr: HashMap::new(),
            zombies: HashMap::new(),
            to_arm: Vec::new(),
            next_generation: 1,
            #[cfg(test)]
            polls_issued: 0,
            _winsock: winsock,
        };
        Ok((iocp, waker))
    }
}

/// The poller's registry validates every change and skips an unchanged interest before any
/// of these is called.
impl Registrar for Iocp {
    /// Issues the socket's first poll at once (so a bad socket fails here).
    fn add(&mut self, socket: RawSocket, token: Token, interest: Triggers) -> io::Result<()> {
        let base = afd::base_socket(socket)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        let state = StatePtr::new(token, generation);
        let addr = state.addr();
        self.slots.insert(
            token,
            Slot {
                base,
                interest,
                phase: Phase::Idle,
                queued: false,
                generation,
                state,
            },
        );
        if let Err(e) = self.arm(token) {
            if let Some(slot) = self.slots.remove(&token) {
                // SAFETY: the poll was not issued (arm failed), so nothing is in flight.
                unsafe { slot.state.free() };
            }
            return Err(e);
        }
        self.by_addr.insert(addr, token);
        Ok(())
    }

    /// No syscall unless the AFD mask in flight must change.
    fn modify(
        &mut self,
        _socket: RawSocket,
        token: Token,
        _old: Triggers,
        interest: Triggers,
    ) -> io::Result<()> {
        let Some(slot) = self.slots.get_mut(&token) else {
            return Err(io::Error::other("iocp: registration without state"));
        };
        match slot.phase {
            Phase::Pending { mask } if mask != afd_mask(interest) => {
                let iosb = slot.state.get().iosb.get();
                // SAFETY: `iosb` belongs to the poll in flight, issued through self.afd.
                unsafe { self.afd.cancel(iosb) }?;
                slot.phase = Phase::Cancelling;
            }
            Phase::Idle if !slot.queued => {
                slot.queued = true;
                self.to_arm.push(token);
            }
            // Already watching exactly these events; or the cancelled poll's completion will
            // re-arm with the new interest; or already queued; or closed.
            Phase::Pending { .. } | Phase::Cancelling | Phase::Idle | Phase::Closed => {}
        }
        slot.interest = interest;
        Ok(())
    }

    /// A poll in flight is cancelled and its block kept as a zombie until the completion
    /// comes back.
    fn remove(&mut self, _socket: RawSocket, token: Token) -> io::Result<()> {
        let Some(slot) = self.slots.remove(&token) else {
            return Ok(());
        };
        self.by_addr.remove(&slot.state.addr());
        match slot.phase {
            Phase::Pending { .. } => {
                let iosb = slot.state.get().iosb.get();
                // SAFETY: `iosb` belongs to the poll in flight, issued through self.afd.
                if let Err(e) = unsafe { self.afd.cancel(iosb) } {
                    // The poll then ends when the socket is closed (LOCAL_CLOSE), which the
                    // caller is about to do; the zombie is freed then.
                    tracing::debug!(error = %e, "iocp: cancelling a poll failed");
                }
                self.zombies.insert(slot.state.addr(), slot.state);
            }
            Phase::Cancelling => {
                self.zombies.insert(slot.state.addr(), slot.state);
            }
            Phase::Idle | Phase::Closed => {
                // SAFETY: no poll is in flight in these phases.
                unsafe { slot.state.free() };
            }
        }
        Ok(())
    }
}

impl Iocp {
    /// Re-arms queued registrations, then dequeues completions until one maps to an event,
    /// the waker fires or the deadline passes. Returns the number of events (0: timed out).
    pub(crate) fn wait(
        &mut self,
        waker: &Waker,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        // Whole milliseconds, rounded up, so that a sub-millisecond timeout blocks for a
        // millisecond even if the port's wait returns a little early (Wine's timers do).
        // A deadline that overflows `Instant` is treated as "forever".
        let deadline = timeout.and_then(|t| {
            let ms = u64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            Instant::now().checked_add(Duration::from_millis(ms))
        });
        let mut entries = [OVERLAPPED_ENTRY::default(); ENTRIES];
        let mut notified = false;
        let mut final_pass = false;
        loop {
            self.arm_queued(events);
            let mut ms = if final_pass || !events.is_empty() {
                0
            } else {
                timeout_ms(deadline)
            };
            for _ in 0..MAX_BATCHES {
                let n = self.port.get_many(&mut entries, ms)?;
                for entry in &entries[..n] {
                    match entry.lpCompletionKey {
                        KEY_AFD => self.complete_poll(entry.lpOverlapped as usize, events),
                        KEY_WAKER => {
                            waker.consumed();
                            if !notified {
                                notified = true;
                                events.push(Event {
                                    token: Token::WAKER,
                                    triggers: Triggers::NOTIFY,
                                });
                            }
                        }
                        key => tracing::warn!(key, "iocp: completion with an unknown key"),
                    }
                }
                if n < ENTRIES {
                    break;
                }
                ms = 0; // a full batch: take what else is queued, without blocking
            }
            if !events.is_empty() {
                return Ok(events.len());
            }
            if final_pass {
                return Ok(0);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Timed out. Polls re-issued in this pass (after a cancel) get one last
                // look without blocking, so `Some(ZERO)` still sees what is ready.
                if self.to_arm.is_empty() {
                    return Ok(0);
                }
                final_pass = true;
            }
            // Only cancellations or filtered completions: wait again for the rest.
        }
    }

    /// Issues the poll of every queued registration that is idle. A poll that cannot be
    /// issued reports `ERR` (and is tried again at the next wait), unless the socket is gone.
    fn arm_queued(&mut self, events: &mut Vec<Event>) {
        let queued = std::mem::take(&mut self.to_arm);
        let mut retry = Vec::new();
        for &token in &queued {
            if let Err(e) = self.arm(token) {
                let Some(slot) = self.slots.get_mut(&token) else {
                    continue;
                };
                if is_closed_socket(&e) {
                    // Closed behind our back: like LOCAL_CLOSE, stop watching.
                    slot.phase = Phase::Closed;
                    continue;
                }
                tracing::debug!(error = %e, ?token, "iocp: poll could not be issued");
                events.push(Event {
                    token,
                    triggers: Triggers::ERR,
                });
                slot.queued = true;
                retry.push(token);
            }
        }
        // Keep the allocation of the (now drained) queue.
        let mut queued = queued;
        queued.clear();
        queued.append(&mut retry);
        queued.append(&mut self.to_arm);
        self.to_arm = queued;
    }

    /// Issues a poll for `token` if it is registered and idle.
    fn arm(&mut self, token: Token) -> io::Result<()> {
        let Some(slot) = self.slots.get_mut(&token) else {
            return Ok(()); // deregistered since it was queued
        };
        slot.queued = false;
        if slot.phase != Phase::Idle {
            return Ok(());
        }
        let mask = afd_mask(slot.interest);
        let state = slot.state.get();
        // SAFETY: phase Idle: no poll is in flight, so the block is ours to write.
        unsafe { *state.info.get() = AfdPollInfo::new(slot.base, mask) };
        let context = slot.state.addr() as *const c_void;
        // SAFETY: the block stays allocated and untouched until the completion carrying
        // `context` is dequeued: the phase becomes Pending below, and a Pending block is only
        // freed after its completion (module docs, "Ownership"). `context` is non-null.
        unsafe { self.afd.poll(state.iosb.get(), state.info.get(), context) }?;
        slot.phase = Phase::Pending { mask };
        #[cfg(test)]
        {
            self.polls_issued += 1;
        }
        Ok(())
    }

    /// Handles the completion of the poll whose block is at `addr`.
    fn complete_poll(&mut self, addr: usize, events: &mut Vec<Event>) {
        if let Some(state) = self.zombies.remove(&addr) {
            // SAFETY: this was its poll's completion: the kernel is done with the block, and
            // removing it from `zombies` dropped the last reference to it.
            unsafe { state.free() };
            return;
        }
        let Some(&token) = self.by_addr.get(&addr) else {
            // Every block on loan is either a live registration's or a zombie.
            tracing::error!(addr, "iocp: completion for an unknown poll");
            return;
        };
        let Some(slot) = self.slots.get_mut(&token) else {
            tracing::error!(?token, "iocp: completion for a registration without state");
            return;
        };
        let state = slot.state.get();
        if state.token != token || state.generation != slot.generation {
            tracing::error!(?token, "iocp: completion for another registration's poll");
            return;
        }
        if !matches!(slot.phase, Phase::Pending { .. } | Phase::Cancelling) {
            tracing::error!(?token, phase = ?slot.phase, "iocp: completion without a poll");
            return;
        }
        // SAFETY: the completion has been dequeued: the kernel has finished writing the
        // block and will not touch it again until the next poll is issued.
        let (status, info) = unsafe { (afd::io_status(&*state.iosb.get()), *state.info.get()) };
        slot.phase = Phase::Idle;
        if status == STATUS_CANCELLED {
            // The interest changed: nothing to report, re-issued below with the new mask.
        } else if status < 0 {
            let e = afd::ntstatus_error(status);
            if is_closed_socket(&e) {
                slot.phase = Phase::Closed;
                return;
            }
            tracing::debug!(error = %e, ?token, "iocp: poll failed");
            events.push(Event {
                token,
                triggers: Triggers::ERR,
            });
        } else {
            let signalled = info.signalled() & afd_mask(slot.interest);
            if signalled & afd::POLL_LOCAL_CLOSE != 0 {
                slot.phase = Phase::Closed;
                return;
            }
            // Empty when nothing matches the current interest (it changed meanwhile).
            let triggers = afd_triggers(signalled, slot.interest);
            if !triggers.is_empty() {
                events.push(Event { token, triggers });
            }
        }
        // Queue the re-arm. A reported registration is re-armed at the start of the next
        // wait (this one returns with its event), after the reactor has consumed the
        // readiness; one with nothing to report is re-armed by this wait's next pass.
        if !slot.queued {
            slot.queued = true;
            self.to_arm.push(token);
        }
    }
}

impl Drop for Iocp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Iocp {
    /// Cancels every poll in flight and drains the port until all have come back, so that
    /// no block is freed while the kernel may still write it (see "Ownership"). Frees every
    /// block; returns how many were still on loan after [`DRAIN_LIMIT`] (and are leaked).
    /// Called by `Drop`; calling it again finds nothing to do.
    fn shutdown(&mut self) -> usize {
        let mut in_flight = self.zombies.len();
        for slot in self.slots.values_mut() {
            match slot.phase {
                Phase::Pending { .. } => {
                    let iosb = slot.state.get().iosb.get();
                    // SAFETY: `iosb` belongs to the poll in flight, issued through self.afd.
                    if let Err(e) = unsafe { self.afd.cancel(iosb) } {
                        tracing::debug!(error = %e, "iocp: cancelling a poll failed");
                    }
                    slot.phase = Phase::Cancelling;
                    in_flight += 1;
                }
                Phase::Cancelling => in_flight += 1,
                Phase::Idle | Phase::Closed => {}
            }
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut entries = [OVERLAPPED_ENTRY::default(); ENTRIES];
        while in_flight > 0 && Instant::now() < deadline {
            let n = match self.port.get_many(&mut entries, timeout_ms(Some(deadline))) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "iocp: draining the port failed");
                    break;
                }
            };
            for entry in entries[..n].iter().filter(|e| e.lpCompletionKey == KEY_AFD) {
                let addr = entry.lpOverlapped as usize;
                if let Some(state) = self.zombies.remove(&addr) {
                    // SAFETY: its completion has been dequeued; nothing else refers to it.
                    unsafe { state.free() };
                    in_flight -= 1;
                } else if let Some(slot) = self
                    .by_addr
                    .get(&addr)
                    .and_then(|token| self.slots.get_mut(token))
                {
                    slot.phase = Phase::Idle;
                    in_flight -= 1;
                }
            }
        }
        self.by_addr.clear();
        for (_, slot) in self.slots.drain() {
            match slot.phase {
                // SAFETY: no poll in flight.
                Phase::Idle | Phase::Closed => unsafe { slot.state.free() },
                // Still the kernel's: leaked on purpose (dropping a StatePtr leaks).
                Phase::Pending { .. } | Phase::Cancelling => {}
            }
        }
        // Zombies still here are leaked the same way.
        self.zombies.clear();
        self.to_arm.clear();
        if in_flight > 0 {
            tracing::error!(
                in_flight,
                "iocp: polls did not come back; their memory is leaked"
            );
        }
        in_flight
    }
}

#[cfg(test)]
mod tests {
    //! The backend through its own API (white box: poll counts, zombies, shutdown). The
    //! behaviour every backend shares is tested in `poller/mod.rs`.

    use super::*;
    use crate::sys::poller::registry::Registry;
    use crate::sys::poller::test_support::{
        connect_nonblocking, tcp_pair, triggers_of, wake_from_threads, LONG,
    };
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::ops::{Deref, DerefMut};
    use std::os::windows::io::AsRawSocket;
    use std::sync::mpsc;
    use std::thread;

    use socket2::SockRef;

    /// The backend behind the registry a `Poller` puts in front of it, so that registration
    /// changes take the poller's path; everything else is the `Iocp`'s (through `Deref`).
    struct Registered {
        registry: Registry,
        iocp: Iocp,
    }

    impl Registered {
        fn register(
            &mut self,
            socket: RawSocket,
            token: Token,
            interest: Triggers,
        ) -> io::Result<()> {
            self.registry
                .register(&mut self.iocp, socket, token, interest)
        }

        fn reregister(
            &mut self,
            socket: RawSocket,
            token: Token,
            interest: Triggers,
        ) -> io::Result<()> {
            self.registry
                .reregister(&mut self.iocp, socket, token, interest)
        }

        fn deregister(&mut self, socket: RawSocket, token: Token) -> io::Result<()> {
            self.registry.deregister(&mut self.iocp, socket, token)
        }
    }

    impl Deref for Registered {
        type Target = Iocp;
        fn deref(&self) -> &Iocp {
            &self.iocp
        }
    }

    impl DerefMut for Registered {
        fn deref_mut(&mut self) -> &mut Iocp {
            &mut self.iocp
        }
    }

    fn new() -> (Registered, Arc<Waker>) {
        let (iocp, waker) = Iocp::new().unwrap();
        let registry = Registry::default();
        (Registered { registry, iocp }, Arc::new(waker))
    }

    fn wait(p: &mut Iocp, waker: &Waker, timeout: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        let n = p.wait(waker, &mut events, Some(timeout)).unwrap();
        assert_eq!(n, events.len());
        events
    }

    /// Waits (up to LONG) until `token` is reported; returns its triggers.
    fn next_for(p: &mut Iocp, waker: &Waker, token: Token) -> Triggers {
        let deadline = Instant::now() + LONG;
        loop {
            let t = triggers_of(&wait(p, waker, Duration::from_millis(100)), token);
            if !t.is_empty() {
                return t;
            }
            assert!(Instant::now() < deadline, "{token:?} never reported");
        }
    }

    fn quiet(p: &mut Iocp, waker: &Waker) {
        assert_eq!(wait(p, waker, Duration::from_millis(30)), []);
    }

    fn raw(s: &impl AsRawSocket) -> RawSocket {
        s.as_raw_socket()
    }

    #[test]
    fn masks_and_mapping() {
        use afd::*;
        use Triggers as T;
        let always = POLL_ABORT | POLL_CONNECT_FAIL | POLL_LOCAL_CLOSE;
        let read = POLL_RECEIVE | POLL_DISCONNECT;
        assert_eq!(afd_mask(T::NONE), always);
        assert_eq!(afd_mask(T::RECV), always | read);
        assert_eq!(afd_mask(T::ACCEPT), always | read | POLL_ACCEPT);
        assert_eq!(afd_mask(T::SEND), always | POLL_SEND);
        assert_eq!(afd_mask(T::CONNECT), always | POLL_SEND);
        assert_eq!(afd_mask(T::RECV | T::SEND), always | read | POLL_SEND);

        assert_eq!(afd_triggers(POLL_RECEIVE, T::RECV), T::RECV);
        assert_eq!(afd_triggers(POLL_RECEIVE, T::ACCEPT), T::ACCEPT);
        assert_eq!(afd_triggers(POLL_ACCEPT, T::ACCEPT), T::ACCEPT);
        assert_eq!(afd_triggers(POLL_SEND, T::SEND), T::SEND);
        assert_eq!(afd_triggers(POLL_SEND, T::CONNECT), T::CONNECT);
        assert_eq!(afd_triggers(POLL_SEND, T::RECV), T::NONE);
        assert_eq!(afd_triggers(POLL_DISCONNECT, T::RECV), T::RECV | T::HUP);
        assert_eq!(afd_triggers(POLL_DISCONNECT, T::NONE), T::HUP);
        assert_eq!(afd_triggers(POLL_ABORT, T::RECV), T::ERR | T::HUP);
        assert_eq!(
            afd_triggers(POLL_CONNECT_FAIL, T::CONNECT),
            T::CONNECT | T::ERR
        );
        assert_eq!(afd_triggers(POLL_CONNECT_FAIL, T::NONE), T::ERR);
        assert_eq!(
            afd_triggers(POLL_RECEIVE | POLL_SEND, T::RECV | T::SEND),
            T::RECV | T::SEND
        );
    }

    #[test]
    fn timeouts_round_up_and_cap() {
        assert_eq!(timeout_ms(None), INFINITE);
        assert_eq!(timeout_ms(Some(Instant::now())), 0);
        let now = Instant::now();
        let ms = timeout_ms(Some(now + Duration::from_micros(100)));
        assert!(ms <= 1, "{ms}");
        let ms = timeout_ms(Some(Instant::now() + Duration::from_micros(900)));
        assert_eq!(ms, 1);
        let far = Instant::now() + Duration::from_secs(60 * 60 * 24 * 365);
        assert_eq!(timeout_ms(Some(far)), INFINITE - 1);
    }

    #[test]
    fn each_event_kind_becomes_its_triggers() {
        let (mut p, w) = new();
        // receive
        let (a, mut b) = tcp_pair();
        p.register(raw(&a), Token(1), Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        b.write_all(b"x").unwrap();
        assert_eq!(next_for(&mut p, &w, Token(1)), Triggers::RECV);
        // disconnect: after the data has been read (see afd.rs), RECV | HUP
        assert_eq!((&a).read(&mut [0u8; 8]).unwrap(), 1);
        drop(b);
        assert_eq!(
            next_for(&mut p, &w, Token(1)),
            Triggers::RECV | Triggers::HUP
        );
        p.deregister(raw(&a), Token(1)).unwrap();
        // abort
        let (a, b) = tcp_pair();
        p.register(raw(&a), Token(2), Triggers::RECV).unwrap();
        SockRef::from(&b).set_linger(Some(Duration::ZERO)).unwrap();
        drop(b);
        let t = next_for(&mut p, &w, Token(2));
        assert!(t.contains(Triggers::ERR | Triggers::HUP), "{t:?}");
        p.deregister(raw(&a), Token(2)).unwrap();
        // send
        let (a, _b) = tcp_pair();
        p.register(raw(&a), Token(3), Triggers::SEND).unwrap();
        assert_eq!(next_for(&mut p, &w, Token(3)), Triggers::SEND);
        p.deregister(raw(&a), Token(3)).unwrap();
        // accept
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        p.register(raw(&listener), Token(4), Triggers::ACCEPT)
            .unwrap();
        quiet(&mut p, &w);
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(next_for(&mut p, &w, Token(4)), Triggers::ACCEPT);
        // connect (success)
        let s = connect_nonblocking(listener.local_addr().unwrap()).unwrap();
        p.register(raw(&s), Token(5), Triggers::CONNECT).unwrap();
        assert_eq!(next_for(&mut p, &w, Token(5)), Triggers::CONNECT);
        p.deregister(raw(&s), Token(5)).unwrap();
        p.deregister(raw(&listener), Token(4)).unwrap();
        // connect failure
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let s = connect_nonblocking(closed).unwrap();
        p.register(raw(&s), Token(6), Triggers::CONNECT).unwrap();
        let t = next_for(&mut p, &w, Token(6));
        assert!(t.contains(Triggers::ERR), "{t:?}");
        assert!(s.take_error().unwrap().is_some());
        p.deregister(raw(&s), Token(6)).unwrap();
        // local close: the registration goes quiet (and deregistering it later is fine)
        let (a, mut b) = tcp_pair();
        let a_raw = raw(&a);
        p.register(a_raw, Token(7), Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        drop(a);
        let _ = b.write_all(b"x");
        quiet(&mut p, &w);
        assert_eq!(p.slots[&Token(7)].phase, Phase::Closed);
        p.deregister(a_raw, Token(7)).unwrap();
        assert_eq!(p.shutdown(), 0);
    }

    #[test]
    fn reported_once_and_rearmed_only_when_waited_again() {
        let (mut p, w) = new();
        let (a, mut b) = tcp_pair();
        p.register(raw(&a), Token(1), Triggers::RECV).unwrap();
        assert_eq!(p.polls_issued, 1);
        b.write_all(b"hello").unwrap();
        assert_eq!(next_for(&mut p, &w, Token(1)), Triggers::RECV);
        let issued = p.polls_issued;
        // Unread: the next wait re-arms once and reports again.
        let events = wait(&mut p, &w, Duration::ZERO);
        assert_eq!(triggers_of(&events, Token(1)), Triggers::RECV);
        assert_eq!(p.polls_issued, issued + 1);
        // Read: one re-arm, then nothing, and no more polls while it stays pending.
        assert_eq!((&a).read(&mut [0u8; 16]).unwrap(), 5);
        quiet(&mut p, &w);
        assert_eq!(p.polls_issued, issued + 2);
        for _ in 0..5 {
            quiet(&mut p, &w);
        }
        assert_eq!(p.polls_issued, issued + 2, "a pending poll was re-issued");
        // An unchanged reregister costs nothing either.
        p.reregister(raw(&a), Token(1), Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        assert_eq!(p.polls_issued, issued + 2);
    }

    #[test]
    fn interest_change_cancels_and_polls_again() {
        let (mut p, w) = new();
        let (a, mut b) = tcp_pair();
        let t = Token(1);
        p.register(raw(&a), t, Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        // RECV -> SEND: the pending RECEIVE poll is cancelled, SEND polled in the same wait.
        p.reregister(raw(&a), t, Triggers::SEND).unwrap();
        assert_eq!(p.slots[&t].phase, Phase::Cancelling);
        assert_eq!(triggers_of(&wait(&mut p, &w, LONG), t), Triggers::SEND);
        assert_eq!(p.polls_issued, 2);
        // SEND -> NONE (idle, re-armed with the smaller mask): data is not reported.
        p.reregister(raw(&a), t, Triggers::NONE).unwrap();
        b.write_all(b"x").unwrap();
        quiet(&mut p, &w);
        quiet(&mut p, &w);
        let issued = p.polls_issued;
        assert_eq!(issued, 3, "NONE must not busy-loop on unread data");
        // NONE -> RECV: the data shows (cancel of the NONE poll, re-poll).
        p.reregister(raw(&a), t, Triggers::RECV).unwrap();
        assert_eq!(triggers_of(&wait(&mut p, &w, LONG), t), Triggers::RECV);
        // RECV -> NONE while reported and unread: shrinking stops the reports.
        p.reregister(raw(&a), t, Triggers::NONE).unwrap();
        quiet(&mut p, &w);
        quiet(&mut p, &w);
        assert_eq!(p.shutdown(), 0);
    }

    #[test]
    fn completion_after_deregistration_is_discarded() {
        let (mut p, w) = new();
        let (a, mut b) = tcp_pair();
        p.register(raw(&a), Token(1), Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        p.deregister(raw(&a), Token(1)).unwrap();
        assert_eq!(p.zombies.len(), 1);
        b.write_all(b"x").unwrap();
        // The cancelled poll comes back and is dropped; nothing is reported.
        quiet(&mut p, &w);
        assert_eq!(p.zombies.len(), 0);
        // The same socket under the same token again: a new registration that reports.
        p.register(raw(&a), Token(1), Triggers::RECV).unwrap();
        assert_eq!(next_for(&mut p, &w, Token(1)), Triggers::RECV);
        // Deregister with the completion already queued (not yet dequeued).
        p.reregister(raw(&a), Token(1), Triggers::SEND).unwrap();
        p.deregister(raw(&a), Token(1)).unwrap();
        quiet(&mut p, &w);
        assert_eq!(p.zombies.len(), 0);
        assert_eq!(p.shutdown(), 0);
    }

    #[test]
    fn reused_socket_handle_value_gets_only_its_own_events() {
        let (mut p, w) = new();
        // The reactor's order: deregister, then close; then the handle value comes back.
        let (a, _a_peer) = tcp_pair();
        let old = raw(&a);
        p.register(old, Token(1), Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        p.deregister(old, Token(1)).unwrap();
        drop(a);
        // Closed without deregistering (LOCAL_CLOSE ends that registration).
        let (c, _c_peer) = tcp_pair();
        let closed = raw(&c);
        p.register(closed, Token(2), Triggers::RECV).unwrap();
        quiet(&mut p, &w);
        drop(c);
        quiet(&mut p, &w);
        // Find sockets that got those handle values (other tests run in parallel, so a
        // value may go elsewhere: then only the tokens are checked).
        let mut keep = Vec::new();
        let mut reused = Vec::new();
        for _ in 0..64 {
            let pair = tcp_pair();
            if [old, closed].contains(&raw(&pair.0)) {
                reused.push(pair);
            } else {
                keep.push(pair);
            }
            if reused.len() == 2 {
                break;
            }
        }
        eprintln!("handle values reused: {}", reused.len());
        let mut targets: Vec<(TcpStream, TcpStream)> = reused;
        targets.push(keep.pop().unwrap_or_else(tcp_pair));
        for (i, (s, peer)) in targets.iter_mut().enumerate() {
            let t = Token(10 + i as u64);
            p.register(raw(s), t, Triggers::RECV).unwrap();
            peer.write_all(b"x").unwrap();
            let events = wait(&mut p, &w, LONG);
            assert_eq!(
                events,
                [Event {
                    token: t,
                    triggers: Triggers::RECV
                }]
            );
            p.deregister(raw(s), t).unwrap();
        }
        p.deregister(closed, Token(2)).unwrap();
        assert_eq!(p.shutdown(), 0);
    }

    #[test]
    fn wake_from_another_thread_while_waiting() {
        let (mut p, w) = new();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let waker = Arc::clone(&w);
        let helper = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            waker.wake().unwrap();
            let _ = done_rx.recv_timeout(LONG);
        });
        let start = Instant::now();
        let mut events = Vec::new();
        p.wait(&w, &mut events, None).unwrap();
        let _ = done_tx.send(());
        helper.join().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40));
        assert_eq!(
            events,
            [Event {
                token: Token::WAKER,
                triggers: Triggers::NOTIFY
            }]
        );
        quiet(&mut p, &w);
    }

    #[test]
    fn wakes_before_a_wait_post_one_packet() {
        let (mut p, w) = new();
        wake_from_threads(&w, 4, 50);
        assert!(w.is_posted());
        assert_eq!(wait(&mut p, &w, LONG).len(), 1);
        assert!(!w.is_posted());
        // Nothing left over in the port...
        quiet(&mut p, &w);
        // ... and the next wake posts again.
        w.wake().unwrap();
        assert_eq!(wait(&mut p, &w, LONG).len(), 1);
        quiet(&mut p, &w);
    }

    #[test]
    fn register_rejects_what_is_not_a_socket() {
        let (mut p, _w) = new();
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let handle = std::os::windows::io::AsRawHandle::as_raw_handle(&file) as RawSocket;
        assert!(p.register(handle, Token(1), Triggers::RECV).is_err());
        assert!(p.slots.is_empty());
        assert_eq!(p.shutdown(), 0);
    }

    #[test]
    fn two_hundred_fifty_sockets_on_one_port() {
        const N: usize = 250;
        let (mut p, w) = new();
        let pairs: Vec<_> = (0..N).map(|_| tcp_pair()).collect();
        for (i, (local, peer)) in pairs.iter().enumerate() {
            let interest = if i % 2 == 0 {
                (&*peer).write_all(b"x").unwrap();
                Triggers::RECV
            } else {
                Triggers::SEND
            };
            p.register(raw(local), Token(i as u64 + 1), interest)
                .unwrap();
        }
        // Every one is reported once (possibly over several waits: 256 entries per call).
        let mut seen = vec![Triggers::NONE; N];
        let deadline = Instant::now() + LONG;
        while seen.iter().any(|t| t.is_empty()) {
            assert!(Instant::now() < deadline, "not all reported");
            for e in wait(&mut p, &w, Duration::from_millis(100)) {
                seen[(e.token.0 - 1) as usize] |= e.triggers;
            }
        }
        for (i, t) in seen.iter().enumerate() {
            let want = if i % 2 == 0 {
                Triggers::RECV
            } else {
                Triggers::SEND
            };
            assert_eq!(*t, want, "socket {i}");
        }
        // Consume everything: read the data, stop wanting SEND.
        for (i, (local, _)) in pairs.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!((&*local).read(&mut [0u8; 4]).unwrap(), 1);
            } else {
                p.reregister(raw(local), Token(i as u64 + 1), Triggers::RECV)
                    .unwrap();
            }
        }
        quiet(&mut p, &w);
        let issued = p.polls_issued;
        quiet(&mut p, &w);
        assert_eq!(p.polls_issued, issued, "idle sockets were polled again");
        // Half deregistered with polls in flight: zombies until their completions come.
        for (i, (local, _)) in pairs.iter().enumerate().take(N / 2) {
            p.deregister(raw(local), Token(i as u64 + 1)).unwrap();
        }
        quiet(&mut p, &w);
        assert_eq!(p.zombies.len(), 0);
        // Shutdown cancels the other half and gets every block back.
        assert_eq!(p.shutdown(), 0);
    }

    #[test]
    fn shutdown_gets_back_pending_and_zombie_polls() {
        let (mut p, _w) = new();
        let pairs: Vec<_> = (0..10).map(|_| tcp_pair()).collect();
        for (i, (local, _)) in pairs.iter().enumerate() {
            p.register(raw(local), Token(i as u64 + 1), Triggers::RECV)
                .unwrap();
        }
        for (i, (local, _)) in pairs.iter().enumerate().take(5) {
            p.deregister(raw(local), Token(i as u64 + 1)).unwrap();
        }
        assert_eq!(p.zombies.len(), 5);
        assert_eq!(p.shutdown(), 0);
        assert!(p.zombies.is_empty() && p.slots.is_empty());
        assert_eq!(p.shutdown(), 0);
    }
}
