//! tofu inside a tokio application: 100 tasks send requests over one channel and await their
//! replies, with no thread of their own pumping the group. The echo service runs on a plain
//! thread beside them.

use std::sync::Arc;
use std::time::Duration;

use tofu::{Address, ChannelGroup, Engine, Message, OpCode};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Answers Hellos, Byes and Requests (the body echoed) until the group ends.
fn echo(group: &ChannelGroup) {
    while let Ok(Some(mut m)) = group.wait_receive(None) {
        if matches!(
            m.opcode(),
            OpCode::HelloRequest | OpCode::ByeRequest | OpCode::Request
        ) {
            let _ = m.make_echo();
            let _ = group.post(m);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let server_engine = Engine::with_defaults()?;
    let server = Arc::new(server_engine.create_group()?);
    let listening = server.listen(&Address::tcp("127.0.0.1", 0))?;
    let echo_thread = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || echo(&server))
    };

    let engine = Engine::with_defaults()?;
    let group = Arc::new(engine.create_group()?);
    let ch = group.connect(&listening.address)?;
    let tasks: Vec<_> = (0..100)
        .map(|t| {
            let group = Arc::clone(&group);
            tokio::spawn(async move {
                for i in 0..10 {
                    let mut req = Message::with_opcode(OpCode::Request);
                    req.header.channel = ch;
                    req.set_body(format!("task {t} request {i}").as_bytes());
                    let reply =
                        tokio::time::timeout(Duration::from_secs(10), group.request_async(req))
                            .await
                            .map_err(|_| tofu::RequestError::TimedOut)??;
                    assert_eq!(reply.body(), format!("task {t} request {i}").as_bytes());
                }
                Ok::<_, tofu::RequestError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    server.destroy();
    echo_thread.join().expect("no panic");
    println!("100 tasks x 10 requests answered");
    Ok(())
}
