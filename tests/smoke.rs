mod common;
use common::*;
use hickory_proto::rr::RecordType;

#[tokio::test]
async fn smoke() {
    let server = Server::start(&example_zones());
    let mut client = udp_client(server.addr).await;
    let m = ask(&mut client, "_web._tcp.svc.example.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 3);
    let mut client = tcp_client(server.addr).await;
    let m = ask(&mut client, "_web._tcp.svc.example.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 3);
}
