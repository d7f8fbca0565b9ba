<?php
// A Magento 2 observer of `sales_order_save_after` (see etc/events.xml). Magento dispatches
// that event inside the order's save transaction, on the same database connection, so the
// outbox row commits with the order or not at all; `sales_order_save_commit_after` would run
// after the commit, where a crash loses the purchase.
declare(strict_types=1);

namespace SpotlerOutbox\Observer;

use Magento\Framework\App\ResourceConnection;
use Magento\Framework\Event\Observer;
use Magento\Framework\Event\ObserverInterface;
use SpotlerOutbox\Outbox;

final class PurchaseToOutbox implements ObserverInterface
{
    // An order is a purchase once it is paid (processing) or shipped (complete). It is saved
    // many times on its way; every save after the first is a no-op in the outbox.
    private const PURCHASED_STATES = ['processing', 'complete'];

    public function __construct(private readonly ResourceConnection $resource)
    {
    }

    public function execute(Observer $observer): void
    {
        $order = $observer->getEvent()->getOrder();
        if (!in_array($order->getState(), self::PURCHASED_STATES, true)) {
            return;
        }
        $products = [];
        foreach ($order->getAllVisibleItems() as $item) {
            $products[] = [
                'id' => $item->getSku(),
                'quantity' => (int) $item->getQtyOrdered(),
                'price' => round((float) $item->getPrice(), 2),
            ];
        }
        // The PDO behind Magento's default connection: the one in the order's transaction.
        $pdo = $this->resource->getConnection()->getConnection();
        (new Outbox($pdo))->enqueuePurchase([
            'email' => $order->getCustomerEmail(),
            'orderid' => (string) $order->getIncrementId(),
            'products' => $products,
            'currency' => $order->getOrderCurrencyCode(),
            'totalvalue' => round((float) $order->getGrandTotal(), 2),
        ]);
    }
}
