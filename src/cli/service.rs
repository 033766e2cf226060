//! The serving side of `tofu serve`, `demo` and `soak`: a [`tofu::recipes::Server`] running
//! this service (Hello and Bye are the server's; data is echoed when asked).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tofu::recipes::{Server, Service};
use tofu::{Address, ChannelGroup, Engine, Message, OpCode, Origin};

/// What a service counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServeStats {
    pub connections: u64,
    pub closed: u64,
    pub echoed: u64,
}

/// Counts connections, echoes data if asked, logs if asked, and stops the server after
/// `max_closed` closed connections.
pub struct Serve {
    pub stats: ServeStats,
    pub echo: bool,
    pub max_closed: Option<u64>,
    pub log: bool,
}

impl Service for Serve {
    fn on_message(&mut self, mut m: Message, group: &ChannelGroup) -> ControlFlow<()> {
        let data = matches!(m.opcode(), OpCode::Request | OpCode::Signal);
        if self.echo && data && m.origin() == Origin::Application && m.make_echo().is_ok() {
            self.stats.echoed += 1;
            // A failed post means the channel closed meanwhile; its close comes anyway.
            let _ = group.post(m);
        }
        ControlFlow::Continue(())
    }

    fn on_connect(&mut self, hello: &Message) -> ControlFlow<()> {
        self.stats.connections += 1;
        if self.log {
            println!(
                "connected: channel {} ({})",
                hello.channel(),
                hello.header_value("~connect_to").unwrap_or("?")
            );
        }
        ControlFlow::Continue(())
    }

    fn on_close(&mut self, channel: u16) -> ControlFlow<()> {
        self.stats.closed += 1;
        if self.log {
            println!("closed: channel {channel}");
        }
        match self.max_closed {
            Some(n) if self.stats.closed >= n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }

    fn on_failed_connect(&mut self, end: &Message) -> ControlFlow<()> {
        if self.log {
            let why = end.header_value(tofu::message::ERROR_TEXT);
            println!(
                "closed before its Hello: channel {} ({})",
                end.channel(),
                why.unwrap_or("the peer closed")
            );
        }
        ControlFlow::Continue(())
    }
}

/// Starts an echo server on every address (for `demo` and `soak`).
pub fn echo_server(engine: &Engine, addrs: &[Address]) -> Result<Server<Serve>, String> {
    let service = Serve {
        stats: ServeStats::default(),
        echo: true,
        max_closed: None,
        log: false,
    };
    Server::start(engine, addrs, service).map_err(|e| e.to_string())
}

/// Runs `server` until `stop` is set or the service stops it; returns what it counted.
pub fn run_until(server: Server<Serve>, stop: &AtomicBool) -> ServeStats {
    while !stop.load(Ordering::SeqCst) && !server.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop().stats
}
