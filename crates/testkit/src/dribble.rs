//! A server that accepts connections and answers one byte per second: the
//! slow, hung upstream every timeout must survive.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Accepts on a free loopback port; each connection gets a valid-looking HTTP
/// response, one byte per second, for ever. Stops when dropped.
pub struct DribblingServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl DribblingServer {
    /// Starts listening.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("bound address");
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = socket.read(&mut request).await;
                    let response = b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<icestats>";
                    for byte in response.iter().cycle() {
                        if socket.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        });
        DribblingServer { address, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for DribblingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
