//! The serving side: listen on addresses, answer Hello and Bye, optionally echo data.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tofu::{Address, ChannelGroup, Engine, Message, OpCode, Origin, Status};

/// What a service counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServeStats {
    pub connections: u64,
    pub closed: u64,
    pub echoed: u64,
}

/// Listens on every address; returns the listener channels or a message for people.
pub fn listen_all(
    engine: &Engine,
    g: &ChannelGroup,
    addrs: &[Address],
) -> Result<HashSet<u16>, String> {
    let mut listeners = HashSet::new();
    for a in addrs {
        let mut m = engine.pool().message();
        a.format_listen(&mut m)
            .map_err(|e| format!("bad address {a}: {e}"))?;
        let ch = g
            .post(m)
            .map_err(|e| format!("cannot listen on {a}: {}", e.error))?
            .channel;
        loop {
            let r = g
                .wait_receive(Some(Duration::from_secs(10)))
                .map_err(|e| format!("receive failed: {e}"))?
                .ok_or_else(|| format!("no answer to listen on {a}"))?;
            if r.channel() != ch {
                continue;
            }
            if r.opcode() == OpCode::WelcomeResponse && r.status() == Status::Success {
                listeners.insert(ch);
                break;
            }
            return Err(format!("cannot listen on {a}: {}", r.status()));
        }
    }
    Ok(listeners)
}

/// Serves until `stop` is set, a `ReceiverUpdate` arrives, or `max_closed` connections closed.
pub fn serve(
    g: &ChannelGroup,
    listeners: &HashSet<u16>,
    echo: bool,
    max_closed: Option<u64>,
    stop: &AtomicBool,
    log: bool,
) -> ServeStats {
    let mut st = ServeStats::default();
    while !stop.load(Ordering::SeqCst) {
        if max_closed.is_some_and(|n| st.closed >= n) {
            break;
        }
        let m: Message = match g.wait_receive(Some(Duration::from_millis(200))) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => break,
        };
        let op = m.opcode();
        match (op, m.status(), m.origin()) {
            (_, Status::ReceiverUpdate, _) => break,
            (OpCode::HelloRequest, Status::Success, Origin::Application) => {
                st.connections += 1;
                if log {
                    println!(
                        "connected: channel {} ({})",
                        m.channel(),
                        m.header_value("~connect_to").unwrap_or("?")
                    );
                }
                reply(g, m);
            }
            (OpCode::ByeRequest, Status::Success, Origin::Application) => reply(g, m),
            (OpCode::Request | OpCode::Signal, Status::Success, Origin::Application) if echo => {
                st.echoed += 1;
                reply(g, m);
            }
            (OpCode::Signal, Status::ChannelClosed, Origin::Engine)
                if !listeners.contains(&m.channel()) =>
            {
                st.closed += 1;
                if log {
                    println!("closed: channel {}", m.channel());
                }
            }
            _ => {} // dropped: returns to the pool
        }
    }
    st
}

fn reply(g: &ChannelGroup, mut m: Message) {
    if m.make_echo().is_ok() {
        // A failed post means the channel closed meanwhile; its close is reported anyway.
        let _ = g.post(m);
    }
}
