//! redis-server: starts, answers, survives staged outages, cleans up.

use std::time::Duration;

use balancer_testkit::{RedisServer, process_exists, wait_until};

#[tokio::test]
async fn starts_answers_and_leaves_nothing_running() {
    let redis = RedisServer::start().await;
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(redis.command(&["SET", "k", "v"]).await.unwrap(), "+OK");
    assert_eq!(redis.command(&["GET", "k"]).await.unwrap(), "$1");
    // No persistence: nothing is written to disk.
    assert_eq!(
        redis.command(&["CONFIG", "GET", "save"]).await.unwrap(),
        "*2"
    );
    let pid = redis.pid().expect("running");
    drop(redis);
    assert!(
        !process_exists(pid),
        "redis-server {pid} still running after drop"
    );
}

#[tokio::test]
async fn kill_restart_pause_resume() {
    let mut redis = RedisServer::start().await;
    redis.command(&["SET", "k", "v"]).await.unwrap();
    let port = redis.port();

    redis.kill();
    assert!(!redis.ping().await, "a killed redis must not answer");
    redis.restart().await;
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert_eq!(
        redis.command(&["EXISTS", "k"]).await.unwrap(),
        ":0",
        "a restart loses the data"
    );

    redis.pause();
    assert!(!redis.ping().await, "a frozen redis must not answer");
    redis.resume();
    wait_until(
        "redis to answer after SIGCONT",
        Duration::from_secs(5),
        || async { redis.ping().await.then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_panicking_test_still_cleans_up() {
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let outcome = tokio::spawn(async move {
        let redis = RedisServer::start().await;
        pid_tx.send(redis.pid().expect("running")).unwrap();
        panic!("test failure while redis runs");
    })
    .await;
    assert!(outcome.is_err(), "the task panicked");
    let pid = pid_rx.recv().unwrap();
    assert!(!process_exists(pid), "redis-server {pid} survived a panic");
}
