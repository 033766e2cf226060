//! Steady-state allocation on the user path: a plain loop that builds large messages with
//! `Message::new` and sends them allocates no body per message once running, though the
//! reactor writes and drops them on its own thread. In its own test binary: it counts the
//! process's allocations (the `tofu` command's counting allocator).

mod common;
use common::*;
use tofu::{Message, OpCode};

#[path = "../src/cli/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static HEAP: alloc::Counting = alloc::Counting;

/// Signals of 65000 bytes, each a fresh `Message::with_opcode(..).with_body(..)`, sent with
/// `send_timeout` on one engine with default options and received on another thread: after
/// a warm-up, the whole process (sender, reactor, receiver) allocates far less than once per
/// message (before the buffers of pool-less messages were shared between threads, each
/// body was allocated by the sender and freed by the reactor: at least one per message).
#[test]
fn a_send_loop_of_large_new_messages_allocates_no_body_per_message() {
    const WARM_UP: u64 = 200;
    const COUNT: u64 = 2000;
    let addr = tcp_loopback();
    let e = engine(tofu::Backend::default());
    let (rx, tx) = (e.create_group().unwrap(), e.create_group().unwrap());
    listen(&rx, &addr);
    let (c, _) = connect(&tx, &rx, &addr);
    let body = vec![0x5a_u8; 65000];
    let allocations = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            for _ in 0..WARM_UP + COUNT {
                let m = recv(&rx);
                assert_eq!((m.opcode(), m.body().len()), (OpCode::Signal, 65000));
            }
        });
        let mut before = 0;
        for i in 0..WARM_UP + COUNT {
            if i == WARM_UP {
                before = alloc::allocations();
            }
            let m = Message::with_opcode(OpCode::Signal)
                .on_channel(c)
                .with_body(&body);
            tx.send_timeout(m, None).expect("sent");
        }
        receiver.join().unwrap();
        alloc::allocations() - before
    });
    assert!(
        allocations < COUNT / 10,
        "{allocations} allocations for {COUNT} messages of 65000 bytes"
    );
}
