<?php
// Enqueue one Purchase from PHP, in a transaction of its own: the order script a shop starts
// from. Runs as it is with Debian's php-cli (pdo_pgsql or pdo_mysql):
//
//   DB_PASSWORD=... php examples/php/enqueue.php 'pgsql:host=127.0.0.1;dbname=shop' USER \
//       [ACCOUNT] < purchase.json
//
// purchase.json is the event in Spotler's shape ({"email": ..., "orderid": ..., "products":
// [...]}); ACCOUNT is a store's Spotler account ('' or left out: the default one). The password
// comes from DB_PASSWORD, never the command line (where `ps` would show it). Prints what it
// did; exits 0, 1 when the database refuses, 2 on a usage error.
declare(strict_types=1);

require __DIR__ . '/Outbox.php';

use SpotlerOutbox\Outbox;

if ($argc < 3 || $argc > 4) {
    fwrite(STDERR, "usage: DB_PASSWORD=... php enqueue.php DSN USER [ACCOUNT] < purchase.json\n");
    exit(2);
}
[, $dsn, $user] = $argv;
$account = $argv[3] ?? '';
try {
    $event = json_decode(stream_get_contents(STDIN), true, flags: JSON_THROW_ON_ERROR);
} catch (JsonException $e) {
    fwrite(STDERR, "enqueue.php: the purchase on stdin is not JSON: {$e->getMessage()}\n");
    exit(2);
}
if (!is_array($event) || !isset($event['orderid'])) {
    fwrite(STDERR, "enqueue.php: the purchase on stdin needs an orderid\n");
    exit(2);
}

try {
    $pdo = new PDO($dsn, $user, getenv('DB_PASSWORD') ?: null,
                   [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    $pdo->beginTransaction();
    // The shop's own INSERTs for the order go here, on $pdo: they commit with the outbox row.
    $created = (new Outbox($pdo))->enqueuePurchase($event, $account);
    $pdo->commit();
} catch (PDOException $e) {
    fwrite(STDERR, "enqueue.php: the database refused: {$e->getMessage()}\n");
    exit(1);
}
$orderid = (string) $event['orderid'];
echo $created ? "enqueued order $orderid\n"
              : "order $orderid was already in the outbox: nothing added\n";
