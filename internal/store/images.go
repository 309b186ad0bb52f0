package store

import (
	"context"
	"fmt"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Save-image keys (under the prefix):
//
//	images/<request>       apiv1.Image: the request and its outcome
//	save/<node>/<request>  apiv1.ImageSave: work for the node running the instance

func (s *Store) imageKey(id string) string { return s.prefix + "images/" + id }
func (s *Store) saveKey(node, request string) string {
	return s.prefix + "save/" + node + "/" + request
}

// SavePrefix is the watched prefix of a node's pending saves.
func (s *Store) SavePrefix(node string) string { return s.prefix + "save/" + node + "/" }

// CreateImage stores a request and the node's work item, provided the
// instance is still assigned to that node.
func (s *Store) CreateImage(ctx context.Context, img apiv1.Image, save apiv1.ImageSave) error {
	assigned := s.assignPrefix(img.NodeID) + img.InstanceID
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(assigned), "!=", 0)).
		Then(clientv3.OpPut(s.imageKey(img.RequestID), mustJSON(img)),
			clientv3.OpPut(s.saveKey(img.NodeID, img.RequestID), mustJSON(save))).Commit()
	if err != nil {
		return fmt.Errorf("create image request %s: %w", img.RequestID, err)
	}
	if !resp.Succeeded {
		return ErrNotFound
	}
	return nil
}

// Saves returns a node's pending saves.
func (s *Store) Saves(ctx context.Context, node string) ([]apiv1.ImageSave, error) {
	saves, _, err := list[apiv1.ImageSave](ctx, s.cli, s.SavePrefix(node))
	return saves, err
}

// ListImages returns every save-image request.
func (s *Store) ListImages(ctx context.Context) ([]apiv1.Image, error) {
	images, _, err := list[apiv1.Image](ctx, s.cli, s.prefix+"images/")
	return images, err
}

// GetImage returns one save-image request.
func (s *Store) GetImage(ctx context.Context, id string) (apiv1.Image, error) {
	var img apiv1.Image
	_, err := s.get(ctx, s.imageKey(id), &img)
	return img, err
}

// FinishImage records a node's outcome and removes its work item.
func (s *Store) FinishImage(ctx context.Context, node, request string, fn func(*apiv1.Image)) (apiv1.Image, error) {
	return update(ctx, s, s.imageKey(request), func(img *apiv1.Image) ([]clientv3.Op, error) {
		if img.NodeID != node {
			return nil, ErrNotFound
		}
		fn(img)
		img.TS = time.Now().UTC()
		return []clientv3.Op{clientv3.OpDelete(s.saveKey(node, request))}, nil
	})
}

// PurgeFinishedImages deletes finished requests older than retention, and
// ends pending ones whose instance left its node.
func (s *Store) PurgeFinishedImages(ctx context.Context, retention time.Duration) (int, error) {
	cutoff := time.Now().Add(-retention)
	return purge(ctx, s, "images/", func(img apiv1.Image) (bool, error) {
		if img.Status == apiv1.ImagePending {
			return false, s.failOrphanedImage(ctx, img)
		}
		return !img.TS.After(cutoff), nil
	}, nil)
}

// failOrphanedImage ends a pending request whose instance is no longer
// assigned to its node (terminated, or its node was lost): nobody will save it.
func (s *Store) failOrphanedImage(ctx context.Context, img apiv1.Image) error {
	resp, err := s.cli.Get(ctx, s.assignPrefix(img.NodeID)+img.InstanceID, clientv3.WithCountOnly())
	if err != nil || resp.Count > 0 {
		return err
	}
	_, err = s.FinishImage(ctx, img.NodeID, img.RequestID, func(i *apiv1.Image) {
		if i.Status == apiv1.ImagePending {
			i.Status, i.Message = apiv1.ImageError, "the instance ended before its image was saved"
		}
	})
	return err
}
