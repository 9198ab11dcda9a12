//! Shared fixtures of the black-box suite.

#![allow(dead_code)]

pub mod app;
pub mod proxy;
pub mod tls;
pub mod token;

/// Define `$name` twice: once on SQLite, once on PostgreSQL.
#[macro_export]
macro_rules! both_engines {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::common::app::TestApp::spawn(
                    concat!(stringify!($name), "_sq"),
                    $crate::common::app::Engine::Sqlite,
                )
                .await;
                $body(&app).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = $crate::common::app::TestApp::spawn(
                    concat!(stringify!($name), "_pg"),
                    $crate::common::app::Engine::Postgres,
                )
                .await;
                $body(&app).await;
            }
        }
    };
}

/// [`both_engines!`] for a test that takes its app by value (it restarts or kills it).
#[macro_export]
macro_rules! both_engines_owned {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(
                    $crate::common::app::TestApp::spawn(
                        concat!(stringify!($name), "_sq"),
                        $crate::common::app::Engine::Sqlite,
                    )
                    .await,
                )
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(
                    $crate::common::app::TestApp::spawn(
                        concat!(stringify!($name), "_pg"),
                        $crate::common::app::Engine::Postgres,
                    )
                    .await,
                )
                .await;
            }
        }
    };
}
