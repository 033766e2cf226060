//! `update_receiver`: the cross-thread wake-up through a group's own queue.

mod common;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use tofu::{Error, Message, OpCode, Origin, Role, Status};

#[test]
fn shapes() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        assert!(g
            .wait_receive(Some(Duration::from_nanos(100)))
            .unwrap()
            .is_none());

        g.update_receiver(None).unwrap();
        let mut m = recv(&g);
        assert_eq!(m.message_id(), 0);
        assert_eq!(m.channel(), 0);
        assert_eq!(m.origin(), Origin::Engine);
        assert_eq!(m.opcode().role(), Role::Signal);
        assert_eq!(m.status(), Status::ReceiverUpdate);

        m.header.opcode = OpCode::Request;
        m.header.message_id = 1;
        g.update_receiver(Some(m)).unwrap();
        let m = recv(&g);
        assert_eq!(m.message_id(), 1);
        assert_eq!(m.channel(), 0);
        assert_eq!(m.origin(), Origin::Application);
        assert_eq!(m.opcode().role(), Role::Request);
        assert_eq!(m.status(), Status::ReceiverUpdate);
    });
}

#[test]
fn wakes_a_blocked_receiver_in_fifo_order() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = Arc::new(engine.create_group().unwrap());
        let waiter = {
            let g = Arc::clone(&g);
            std::thread::spawn(move || {
                let a = g.wait_receive(None).unwrap().unwrap();
                let b = g.wait_receive(None).unwrap().unwrap();
                (a.message_id(), b.message_id())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        for id in [5, 6] {
            let mut m = Message::new();
            m.header.message_id = id;
            g.update_receiver(Some(m)).unwrap();
        }
        assert_eq!(waiter.join().unwrap(), (5, 6));
    });
}

#[test]
fn after_destroy_it_fails() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        g.destroy();
        assert_eq!(g.update_receiver(None), Err(Error::ShutdownStarted));
        assert_eq!(
            g.wait_receive(Some(Duration::ZERO)).unwrap_err(),
            Error::ShutdownStarted
        );
    });
}

#[test]
fn huge_timeouts_do_not_panic() {
    on_every_backend(|b| {
        let engine = engine(b);
        let g = engine.create_group().unwrap();
        g.update_receiver(None).unwrap();
        let m = g.wait_receive(Some(Duration::MAX)).unwrap().unwrap();
        assert_eq!(m.status(), Status::ReceiverUpdate);
    });
}
