//! Several replicas on one PostgreSQL database and one SoftHSM2 token directory.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::app::{Engine, TestApp, fresh_postgres_db, kids_in};
use crate::common::proxy::Proxy;

/// Replicas behind one load balancer share one public URL (so one issuer).
const LB: &[(&str, &str)] = &[("HSM_ROTATOR_PUBLIC_URL", "http://keys.test")];

/// Poll `f` until true; returns how long it took. Fails after `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what} not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_replica_reach_the_other_within_a_second() {
    let a = TestApp::spawn_with("replicas_prop", Engine::Postgres, LB).await;
    let b = a.replica(LB).await;
    let (id, pk, _) = a
        .create_app(json!({"name": "Shared", "signing_alg": "ES256", "refresh_ttl": 600}))
        .await;
    let one_second = Duration::from_secs(1);

    // A token issued by A verifies on B (a key B learns about on a cache miss).
    let t = a.issue(&id, &pk, json!({"sub": "alice"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(b.active(&id, &pk, &t).await);
    let t_b = b.issue(&id, &pk, json!({"sub": "bob"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(a.active(&id, &pk, &t_b).await, "and the other way round");

    // Rotation on A: B's JWKS shows the new next key.
    let (s, r) = a
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200);
    let new_next = r["next"]["kid"].as_str().unwrap().to_owned();
    within(one_second, "rotation on B's JWKS", || async {
        b.jwks(&id).await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == new_next.as_str())
    })
    .await;

    // One token revoked on A.
    let (s, _) = a
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": t})),
        )
        .await;
    assert_eq!(s, 200);
    within(one_second, "token revocation on B", || async {
        !b.active(&id, &pk, &t).await
    })
    .await;

    // A subject logged out on A.
    let c = b.issue(&id, &pk, json!({"sub": "carol"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = a
        .bearer(
            &pk,
            "DELETE",
            &format!("/apps/{id}/sessions?sub=carol"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    within(one_second, "subject logout on B", || async {
        !b.active(&id, &pk, &c).await
    })
    .await;

    // A key revoked on A.
    let d = b.issue(&id, &pk, json!({"sub": "dave"})).await;
    let kid = d["kid"].as_str().unwrap().to_owned();
    let d = d["token"].as_str().unwrap().to_owned();
    let (s, _) = a
        .root("POST", &format!("/apps/{id}/keys/{kid}/revoke"), None)
        .await;
    assert_eq!(s, 200);
    within(one_second, "key revocation on B", || async {
        !b.active(&id, &pk, &d).await
    })
    .await;
    let e = b.issue(&id, &pk, json!({"sub": "erin"})).await;
    assert_ne!(
        e["kid"],
        kid.as_str(),
        "B no longer signs with the revoked key"
    );

    // The whole app flushed on A.
    let e = e["token"].as_str().unwrap().to_owned();
    let (s, _) = a
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 200);
    within(one_second, "app flush on B", || async {
        !b.active(&id, &pk, &e).await
    })
    .await;

    // Access-token and root-key changes.
    let (s, v) = a.bearer(&pk, "POST", "/api/token/regenerate", None).await;
    assert_eq!(s, 200);
    let pk2 = v["token"].as_str().unwrap().to_owned();
    within(one_second, "access-token change on B", || async {
        b.bearer(&pk, "GET", &format!("/apps/{id}/keys"), None)
            .await
            .0
            == 401
            && b.bearer(&pk2, "GET", &format!("/apps/{id}/keys"), None)
                .await
                .0
                == 200
    })
    .await;
    let (s, v) = a.call("GET", "/root/rotate", Some(&a.root_key), None).await;
    assert_eq!(s, 200);
    let root2 = v["new-key"].as_str().unwrap().to_owned();
    within(one_second, "root-key change on B", || async {
        b.call("GET", "/apps", Some(&a.root_key), None).await.0 == 401
            && b.call("GET", "/apps", Some(&root2), None).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_on_two_replicas_keep_one_current() {
    let a = TestApp::spawn_with("replicas_cas", Engine::Postgres, LB).await;
    let b = a.replica(LB).await;
    let (id, _pk, _) = a
        .create_app(json!({"name": "Race", "signing_alg": "ES256"}))
        .await;
    let before: HashSet<String> = a
        .keys(&id)
        .await
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let target = if i % 2 == 0 { &a } else { &b };
        let (client, url, root) = (
            target.client.clone(),
            target.url(&format!("/apps/{id}/keys/rotate")),
            a.root_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("Authorization", root)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200 || s == 500 || s == 409, "rotation answered {s}");
        if s == 200 {
            ok += 1;
        }
    }
    assert!(ok >= 8, "most rotations succeed ({ok}/16)");
    let keys = a.keys(&id).await;
    assert_eq!(kids_in(&keys, "current").len(), 1, "exactly one current");
    assert_eq!(kids_in(&keys, "next").len(), 1, "exactly one next");
    assert_eq!(
        kids_in(&keys, "previous").len(),
        ok,
        "one previous per successful rotation"
    );
    let all: HashSet<String> = keys
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), keys.len(), "no duplicated key");
    assert!(before.is_subset(&all), "no lost key");
    // Both replicas agree on the current key.
    let cur = kids_in(&keys, "current")[0].clone();
    within(Duration::from_secs(1), "B agrees", || async {
        kids_in(&b.keys(&id).await, "current") == vec![cur.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scheduler_lease_at_a_time_and_takeover_when_the_holder_dies() {
    use hsm_rotator::store::Store;
    let url = fresh_postgres_db().await;
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    let lease = a.scheduler_lease().await.unwrap().expect("A leads");
    assert!(
        b.scheduler_lease().await.unwrap().is_none(),
        "B stands by while A holds the lease"
    );
    lease.release().await;
    let lb = b
        .scheduler_lease()
        .await
        .unwrap()
        .expect("B takes over after A's tick");
    assert!(a.scheduler_lease().await.unwrap().is_none());
    // B "dies" holding the lease: its session closes and the lock goes with it.
    drop(lb);
    b.pool().close().await;
    let mut taken = false;
    for _ in 0..50 {
        if let Some(l) = a.scheduler_lease().await.unwrap() {
            l.release().await;
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken, "A takes over when B dies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_recover_and_converge_after_the_database_comes_back() {
    let direct = fresh_postgres_db().await;
    let (head, db) = direct.rsplit_once('/').unwrap();
    let (creds, hostport) = head.rsplit_once('@').unwrap();
    let proxy = Proxy::start(hostport.to_owned()).await;
    let via = format!("{creds}@127.0.0.1:{}/{db}", proxy.port);
    let token = std::sync::Arc::new(crate::common::token::TestToken::new("replicas_db"));
    let root = crate::common::app::init_store(&token, &via, LB).await;
    let a = TestApp::start(token, via, LB).await.with_root(&root);
    let b = a.replica(LB).await;
    let (id, pk, _) = a
        .create_app(json!({"name": "Outage", "signing_alg": "ES256"}))
        .await;
    let t = b.issue(&id, &pk, json!({"sub": "z"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    proxy.cut();
    let (s, _) = a
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 500);
    proxy.restore();
    within(Duration::from_secs(10), "A writes again", || async {
        a.root("POST", &format!("/apps/{id}/keys/rotate"), None)
            .await
            .0
            == 200
    })
    .await;
    // B's listener reconnected and reloaded: it sees A's rotation and A's revocations.
    let next = kids_in(&a.keys(&id).await, "next")[0].clone();
    within(Duration::from_secs(10), "B converges", || async {
        b.jwks(&id).await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == next.as_str())
    })
    .await;
    let (s, _) = a
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": t})),
        )
        .await;
    assert_eq!(s, 200);
    within(
        Duration::from_secs(1),
        "revocation after the outage reaches B",
        || async { !b.active(&id, &pk, &t).await },
    )
    .await;
}

/// A token for `sub` issued on `on`.
async fn token_on(on: &TestApp, id: &str, pk: &str, sub: &str) -> String {
    on.issue(id, pk, json!({"sub": sub})).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// After cut-off `what` (already requested): each of `dead` (issued on the replica named
/// with it before the cut-off) becomes inactive on every replica, and a token for `sub`
/// issued on any replica after it is active on every replica.
async fn cut_off_exactly(
    what: &str,
    replicas: &[(&str, &TestApp)],
    (id, pk): (&str, &str),
    dead: &[(&str, String)],
    sub: &str,
) {
    for (r, t) in dead {
        for (n, on) in replicas {
            within(
                Duration::from_secs(5),
                &format!("{what}: the token issued on {r} before it, inactive on {n}"),
                || async { !on.active(id, pk, t).await },
            )
            .await;
        }
    }
    for (r, on) in replicas {
        let t = token_on(on, id, pk, sub).await;
        for (n, check_on) in replicas {
            assert!(
                check_on.active(id, pk, &t).await,
                "{what}: a token issued on {r} after it is active on {n}"
            );
        }
    }
}

/// Replicas whose host clocks disagree by a minute: a flush or a logout on one ends every
/// token issued before it on any of them, and none issued after it. Token ids are stamped
/// on the database's clock and cut-offs read from it; on the replicas' own clocks, the
/// token issued 30 s "in the future" before the flush would outlive it, and the one issued
/// 30 s "in the past" after it would die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_logout_cut_off_by_the_databases_clock_whatever_the_replicas_clocks() {
    let a = TestApp::spawn_with("replicas_clock", Engine::Postgres, LB).await;
    let ahead = a
        .replica(&[LB[0], ("HSM_ROTATOR_TEST_CLOCK_SKEW_MS", "30000")])
        .await;
    let behind = a
        .replica(&[LB[0], ("HSM_ROTATOR_TEST_CLOCK_SKEW_MS", "-30000")])
        .await;
    let (id, pk, _) = a
        .create_app(json!({"name": "Clocks", "signing_alg": "ES256"}))
        .await;
    let replicas = [("a", &a), ("ahead", &ahead), ("behind", &behind)];
    let app = (id.as_str(), pk.as_str());

    let mut before = Vec::new();
    for (r, on) in replicas {
        before.push((r, token_on(on, &id, &pk, "alice").await));
    }
    let (s, v) = a
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    cut_off_exactly("flush", &replicas, app, &before, "carol").await;

    let mut bob = Vec::new();
    for (r, on) in replicas {
        bob.push((r, token_on(on, &id, &pk, "bob").await));
    }
    let (s, v) = a
        .bearer(&pk, "DELETE", &format!("/apps/{id}/sessions?sub=bob"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    cut_off_exactly("logout", &replicas, app, &bob, "bob").await;
}

/// The refresh reuse grace is decided in the store, not in one replica's memory: an
/// exchange on A, then a retry of the same token on B within the grace, gets a new pair
/// and supersedes A's (inactive on both); the superseded token presented later on A is
/// reuse. Two replicas racing on one token leave exactly one live pair, never a revoked
/// family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_retried_on_another_replica_within_the_grace_supersedes_the_first_pair() {
    let a = TestApp::spawn_with("replicas_retry", Engine::Postgres, LB).await;
    let b = a.replica(LB).await;
    let (id, pk, _) = a
        .create_app(json!({"name": "Retry", "signing_alg": "ES256", "refresh_ttl": 600}))
        .await;
    let path = format!("/apps/{id}/tokens/refresh");
    let rt = a.issue(&id, &pk, json!({"sub": "fay"})).await["refresh_token"].clone();
    let (s, first) = a
        .bearer(&pk, "POST", &path, Some(json!({"refresh_token": rt})))
        .await;
    assert_eq!(s, 200, "{first}");
    let (s, retried) = b
        .bearer(&pk, "POST", &path, Some(json!({"refresh_token": rt})))
        .await;
    assert_eq!(s, 200, "the retry on B gets a new pair: {retried}");
    let lost = first["token"].as_str().unwrap().to_owned();
    let kept = retried["token"].as_str().unwrap().to_owned();
    for (n, on) in [("A", &a), ("B", &b)] {
        within(
            Duration::from_secs(5),
            &format!("the superseded pair inactive on {n}"),
            || async { !on.active(&id, &pk, &lost).await },
        )
        .await;
        assert!(on.active(&id, &pk, &kept).await, "the retry's pair on {n}");
    }
    let (s, e) = a
        .bearer(
            &pk,
            "POST",
            &path,
            Some(json!({"refresh_token": first["refresh_token"]})),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("refresh_token_reused"))
    );
    within(
        Duration::from_secs(5),
        "the family revoked on B",
        || async { !b.active(&id, &pk, &kept).await },
    )
    .await;

    // A race: both replicas exchange one token at once.
    let rt = a.issue(&id, &pk, json!({"sub": "gus"})).await["refresh_token"].clone();
    let body = json!({"refresh_token": rt});
    let (ra, rb) = tokio::join!(
        a.bearer(&pk, "POST", &path, Some(body.clone())),
        b.bearer(&pk, "POST", &path, Some(body.clone())),
    );
    let pairs: Vec<_> = [ra, rb]
        .into_iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| v)
        .collect();
    assert!(!pairs.is_empty(), "at least one exchange succeeds");
    // Denials only ever add up: wait until exactly one pair is live on A.
    let live = || async {
        let mut live = Vec::new();
        for p in &pairs {
            if a.active(&id, &pk, p["token"].as_str().unwrap()).await {
                live.push(p.clone());
            }
        }
        live
    };
    within(Duration::from_secs(5), "exactly one live pair", || async {
        live().await.len() == 1
    })
    .await;
    let winner = live().await.pop().unwrap();
    let (s, v) = b
        .bearer(
            &pk,
            "POST",
            &path,
            Some(json!({"refresh_token": winner["refresh_token"]})),
        )
        .await;
    assert_eq!(s, 200, "the family lives on: {v}");
}
